"""Component 3: fine-tuning under a tf.distribute strategy; writes the servable model."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from tlp.components.container_images import image_reference


@dsl.component(base_image=image_reference(kind="train"), install_kfp_package=False)
def fine_tuning(
    dataset: Input[Dataset],
    base_model: Input[Model],
    model: Output[Model],
    history: Output[Artifact],
    fine_tune_at: int = 100,
    fine_tune_epochs: int = 10,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
    devices: str = "auto",
    seed: int = 42,
    mixed_precision: str = "float32",
    xla: bool = False,
    steps_per_execution: int = 1,
) -> NamedTuple("FineTuningOutputs", [("replicas", int)]):
    """Unfreezes the base from ``fine_tune_at`` and trains at ``learning_rate / 10``.

    Args:
        dataset: The data-prep output.
        base_model: The feature-extraction output.
        model: Output: a SavedModel whose serving signature takes encoded image bytes
            (``image_bytes``) and returns probabilities and label; also model.keras.
        history: Output: per-epoch loss/accuracy of this phase (JSON).
        fine_tune_at: First layer of the base to train.
        fine_tune_epochs: Epochs of fine-tuning (0 skips it).
        learning_rate: The base learning rate of the first phase (divided by 10 here).
        batch_size: Batch size per replica.
        devices: auto, cpu:N (N logical CPUs, for tests) or gpu[:N].
        seed: Random seed.
        mixed_precision: float32, mixed_float16 or mixed_bfloat16 (GPU/TPU speed-up).
        xla: Compile the training step with XLA.
        steps_per_execution: Batches per compiled call (fewer host round trips on GPUs).

    Returns:
        The number of replicas in sync.
    """
    import os
    from collections import namedtuple

    from tlp.components.lib.training import fine_tune, save_history

    result, replicas = fine_tune(
        dataset.path, base_model.path, model.path, fine_tune_at=fine_tune_at,
        fine_tune_epochs=fine_tune_epochs, learning_rate=learning_rate, batch_size=batch_size,
        devices=devices, seed=seed, backup_dir=os.path.join(os.path.dirname(model.path), "backup"),
        precision=mixed_precision, xla=xla, steps_per_execution=steps_per_execution,
    )
    save_history(result, history.path)
    model.metadata.update({"framework": "tensorflow", "format": "saved_model", "replicas": replicas})
    return namedtuple("FineTuningOutputs", ["replicas"])(replicas)
