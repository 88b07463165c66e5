"""Component 2: feature-extraction training (frozen base, train the head)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from tlp.components.container_images import image_reference


@dsl.component(base_image=image_reference(kind="train"), install_kfp_package=False)
def feature_extraction(
    dataset: Input[Dataset],
    model: Output[Model],
    history: Output[Artifact],
    options: dict,
) -> NamedTuple("FeatureExtractionOutputs", [("val_accuracy", float)]):
    """Trains the classification head on a frozen ImageNet base (features computed once).

    Args:
        dataset: The data-prep output.
        model: Output: the Keras model (model.keras) and model_info.json.
        history: Output: per-epoch loss/accuracy (JSON).
        options: The options this step reads (base, weights, head, training and runtime
            options; declared in tlp.components.lib.settings).

    Returns:
        The validation accuracy after the last epoch.
    """
    import os
    from collections import namedtuple

    from tlp.components.lib.settings import Settings
    from tlp.components.lib.steps import FEATURE_EXTRACTION
    from tlp.components.lib.training import save_history, train_head

    settings = Settings.for_step(FEATURE_EXTRACTION, options)
    backup_dir = os.path.join(os.path.dirname(model.path), "backup")  # a retried task finds it and resumes
    result = train_head(dataset.path, model.path, settings, backup_dir=backup_dir)
    save_history(result, history.path)
    model.metadata.update({"framework": "tf-keras", "base": settings.model.base, "weights": settings.model.weights})
    return namedtuple("FeatureExtractionOutputs", ["val_accuracy"])(result["val_accuracy"][-1])
