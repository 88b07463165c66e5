"""The pipeline factory. Every setting is a pipeline parameter with the tutorial's default;
only the container images and the fine-tuning hardware are fixed when the pipeline is built
(compile time)."""

from dataclasses import dataclass

from kfp import dsl

from tlp.components.container_images import DEFAULT_REPO, image_reference
from tlp.components.data_prep import data_prep
from tlp.components.evaluation import evaluation
from tlp.components.feature_extraction import feature_extraction
from tlp.components.fine_tuning import fine_tuning
from tlp.components.registration import registration

PIPELINE_NAME = "transfer-learning"
STEP_NAMES = ("data-prep", "feature-extraction", "fine-tuning", "evaluation", "registration")


@dataclass(frozen=True)
class FineTuneHardware:
    """Where fine-tuning runs on Vertex AI (ignored by the local runner).

    ``gpus`` GPUs of type ``accelerator`` (a Vertex AI AcceleratorType name, e.g. NVIDIA_L4) on
    each of ``replicas`` machines. With ``machine_type`` set or more than one replica, the step
    runs as a Vertex AI custom job (google-cloud-pipeline-components), which takes an exact
    machine type and gives replicas beyond the first a TF_CONFIG; otherwise the step asks the
    pipeline for the GPUs and Vertex AI picks the machine.
    """

    gpus: int = 0
    accelerator: str = ""
    machine_type: str = ""
    replicas: int = 1
    # A custom job does not inherit the pipeline's identity or network: pass them on.
    service_account: str = ""
    network: str = ""

    @property
    def as_custom_job(self) -> bool:
        return bool(self.machine_type) or self.replicas > 1


DEFAULT_MACHINE_TYPE = "n1-standard-8"


def _on_hardware(tune_op, hardware: FineTuneHardware):
    """The fine-tuning component, wrapped as a custom job when the hardware asks for one."""
    if not hardware.as_custom_job:
        return tune_op
    from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component

    return create_custom_training_job_from_component(
        tune_op,
        display_name="fine-tuning",
        replica_count=hardware.replicas,
        machine_type=hardware.machine_type or DEFAULT_MACHINE_TYPE,
        accelerator_type=hardware.accelerator if hardware.gpus else "",
        accelerator_count=hardware.gpus if hardware.gpus else 1,
        # BackupAndRestore resumes from the last epoch when Vertex AI restarts a preempted worker.
        restart_job_on_worker_restart=True,
        service_account=hardware.service_account,
        network=hardware.network,
    )


def _on_image(component, image: str):
    """The same component, set to run in ``image``."""
    return dsl.component(component.python_func, base_image=image, install_kfp_package=False)


def create_pipeline(
    image_repo: str = DEFAULT_REPO, image_tag: str | None = None, hardware: FineTuneHardware = FineTuneHardware()
):
    """Builds the pipeline. ``image_repo``/``image_tag`` choose the component images,
    ``hardware`` where fine-tuning runs on Vertex AI."""
    light = image_reference(image_repo, image_tag, kind="light")
    train = image_reference(image_repo, image_tag, kind="train")
    prep_op = _on_image(data_prep, light)
    head_op = _on_image(feature_extraction, train)
    tune_op = _on_hardware(_on_image(fine_tuning, train), hardware)
    eval_op = _on_image(evaluation, light)
    register_op = _on_image(registration, light)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Transfer learning from an ImageNet ConvNet: data prep, feature extraction, "
        "fine-tuning, evaluation with an overfitting gate, registration.",
    )
    def transfer_learning(
        data: str = "tfds:cats_vs_dogs",
        weights: str = "imagenet",
        base: str = "MobileNetV2",
        alpha: float = 1.0,
        image_size: int = 160,
        batch_size: int = 32,
        epochs: int = 10,
        fine_tune_epochs: int = 10,
        fine_tune_at: int = 100,
        learning_rate: float = 1e-4,
        dropout: float = 0.2,
        devices: str = "auto",
        max_gap: float = 0.05,
        min_accuracy: float = 0.90,
        registry: str = "sqlite:///tlp-runs/registry.db",
        model_name: str = "",
        seed: int = 42,
        max_skipped_fraction: float = 0.10,
        champion_tolerance: float = 0.0,
        mixed_precision: str = "float32",
        xla: bool = False,
        steps_per_execution: int = 1,
    ):
        speedups = {"mixed_precision": mixed_precision, "xla": xla, "steps_per_execution": steps_per_execution}
        prep = prep_op(data=data, image_size=image_size, seed=seed, max_skipped_fraction=max_skipped_fraction)
        prep.set_display_name("data-prep")
        head = head_op(
            dataset=prep.outputs["dataset"], base=base, alpha=alpha, weights=weights,
            epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, dropout=dropout,
            seed=seed, **speedups,
        )
        head.set_display_name("feature-extraction")
        tuned = tune_op(
            dataset=prep.outputs["dataset"], base_model=head.outputs["model"],
            fine_tune_at=fine_tune_at, fine_tune_epochs=fine_tune_epochs,
            learning_rate=learning_rate, batch_size=batch_size, devices=devices, seed=seed, **speedups,
        )
        tuned.set_display_name("fine-tuning")
        if hardware.gpus and not hardware.as_custom_job:
            tuned.set_accelerator_type(hardware.accelerator).set_accelerator_limit(hardware.gpus)
        scored = eval_op(
            dataset=prep.outputs["dataset"], model=tuned.outputs["model"],
            feature_history=head.outputs["history"], fine_tune_history=tuned.outputs["history"],
            max_gap=max_gap, min_accuracy=min_accuracy,
        )
        scored.set_display_name("evaluation")
        with dsl.If(scored.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
            registered = register_op(
                model=tuned.outputs["model"], dataset=prep.outputs["dataset"],
                metrics=scored.outputs["metrics"], report=scored.outputs["report"],
                registry=registry, model_name=model_name,
                champion_tolerance=champion_tolerance,
            )
            registered.set_display_name("registration")

    return transfer_learning
