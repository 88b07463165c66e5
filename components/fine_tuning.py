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
    options: dict,
) -> NamedTuple("FineTuningOutputs", [("replicas", int)]):  # type: ignore[valid-type]  # kfp's NamedTuple outputs idiom
    """Unfreezes the base from ``fine_tune_at`` and trains at ``learning_rate / 10``.

    Args:
        dataset: The data-prep output.
        base_model: The feature-extraction output.
        model: Output: a SavedModel whose serving signature takes encoded image bytes
            (``image_bytes``) and returns probabilities and label; also model.keras. TensorBoard
            logs go beside it (``tensorboard/``), or to Vertex AI's ``AIP_TENSORBOARD_LOG_DIR``.
        history: Output: per-epoch loss/accuracy of this phase (JSON).
        options: The options this step reads (fine-tuning, training and runtime options;
            declared in tlp.components.lib.settings).

    Returns:
        The number of replicas in sync.
    """
    import os
    from collections import namedtuple

    from tlp.components.lib.settings import Settings
    from tlp.components.lib.steps import FINE_TUNING
    from tlp.components.lib.training import fine_tune, save_history, tensorboard_dir

    task_dir = os.path.dirname(model.path)
    logs = tensorboard_dir(os.path.join(task_dir, "tensorboard"))
    result, replicas = fine_tune(
        dataset.path, base_model.path, model.path, Settings.for_step(FINE_TUNING, options),
        backup_dir=os.path.join(task_dir, "backup"), tensorboard_dir=logs,
    )
    save_history(result, history.path)
    model.metadata.update({"framework": "tensorflow", "format": "saved_model", "replicas": replicas,
                           "tensorboard": logs})
    FineTuningOutputs = namedtuple("FineTuningOutputs", ["replicas"])
    return FineTuningOutputs(replicas)
