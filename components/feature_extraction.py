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
    base: str = "MobileNetV2",
    alpha: float = 1.0,
    weights: str = "imagenet",
    epochs: int = 10,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
    dropout: float = 0.2,
    seed: int = 42,
    mixed_precision: str = "float32",
    xla: bool = False,
    steps_per_execution: int = 1,
) -> NamedTuple("FeatureExtractionOutputs", [("val_accuracy", float)]):
    """Trains the classification head on a frozen ImageNet base (features computed once).

    Args:
        dataset: The data-prep output.
        model: Output: the Keras model (model.keras) and model_info.json.
        history: Output: per-epoch loss/accuracy (JSON).
        base: Keras application name, e.g. MobileNetV2.
        alpha: Width multiplier of MobileNet bases.
        weights: ``imagenet``, ``none`` (random) or a local .h5 weights file.
        epochs: Training epochs of the head.
        learning_rate: RMSprop learning rate.
        batch_size: Batch size.
        dropout: Dropout rate before the Dense layer.
        seed: Random seed.
        mixed_precision: float32, mixed_float16 or mixed_bfloat16 (GPU/TPU speed-up).
        xla: Compile the training step with XLA.
        steps_per_execution: Batches per compiled call (fewer host round trips on GPUs).

    Returns:
        The validation accuracy after the last epoch.
    """
    import os
    from collections import namedtuple

    from tlp.components.lib.training import save_history, train_head

    result = train_head(
        dataset.path, model.path, base=base, alpha=alpha, weights=weights, epochs=epochs,
        learning_rate=learning_rate, batch_size=batch_size, dropout=dropout, seed=seed,
        # Beside the output: a retried (preempted) task finds it and resumes.
        backup_dir=os.path.join(os.path.dirname(model.path), "backup"),
        precision=mixed_precision, xla=xla, steps_per_execution=steps_per_execution,
    )
    save_history(result, history.path)
    model.metadata.update({"framework": "tf-keras", "base": base, "weights": weights})
    return namedtuple("FeatureExtractionOutputs", ["val_accuracy"])(result["val_accuracy"][-1])
