"""The pipeline factory. Every setting is a pipeline parameter with the tutorial's default;
only the container images are fixed when the pipeline is built (compile time)."""

from kfp import dsl

from components.container_images import DEFAULT_REPO, image_reference
from components.data_prep import data_prep
from components.evaluation import evaluation
from components.feature_extraction import feature_extraction
from components.fine_tuning import fine_tuning
from components.registration import registration

PIPELINE_NAME = "transfer-learning"
STEP_NAMES = ("data-prep", "feature-extraction", "fine-tuning", "evaluation", "registration")


def _on_image(component, image: str):
    """The same component, set to run in ``image``."""
    return dsl.component(component.python_func, base_image=image, install_kfp_package=False)


def create_pipeline(image_repo: str = DEFAULT_REPO, image_tag: str | None = None):
    """Builds the pipeline. ``image_repo``/``image_tag`` choose the component images."""
    light = image_reference(image_repo, image_tag, kind="light")
    train = image_reference(image_repo, image_tag, kind="train")
    prep_op = _on_image(data_prep, light)
    head_op = _on_image(feature_extraction, train)
    tune_op = _on_image(fine_tuning, train)
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
