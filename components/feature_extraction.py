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
) -> NamedTuple("FeatureExtractionOutputs", [("val_accuracy", float)]):  # type: ignore[valid-type]  # kfp's NamedTuple outputs idiom
    """Trains the classification head on a frozen ImageNet base (features computed once).

    Args:
        dataset: The data-prep output.
        model: Output: the Keras model (model.keras) and model_info.json. TensorBoard logs go
            beside it (``tensorboard/``), or to Vertex AI's ``AIP_TENSORBOARD_LOG_DIR``.
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
    from tlp.components.lib.training import save_history, tensorboard_dir, train_head

    settings = Settings.for_step(FEATURE_EXTRACTION, options)
    task_dir = os.path.dirname(model.path)
    backup_dir = os.path.join(task_dir, "backup")  # a retried task finds it and resumes
    logs = tensorboard_dir(os.path.join(task_dir, "tensorboard"))
    result = train_head(dataset.path, model.path, settings, backup_dir=backup_dir, tensorboard_dir=logs)
    save_history(result, history.path)
    model.metadata.update({"framework": "tf-keras", "base": settings.model.base, "weights": settings.model.weights,
                           "augment": settings.training.augment, "tensorboard": logs})
    return namedtuple("FeatureExtractionOutputs", ["val_accuracy"])(result["val_accuracy"][-1])
