"""The pipeline factory. Every option declared with pipeline steps in
``tlp/components/lib/settings.py`` is a pipeline parameter with its default; each step
receives the options it reads as one ``options`` dict. Only the container images, the
fine-tuning hardware and the training steps' retries are fixed when the pipeline is built
(compile time).

Caching (Vertex AI, Kubeflow Pipelines): the first step, data-fingerprint, is never cached and
lists the source (a bucket's listing is saved under LISTING_FOLDER, for data prep to read instead of
listing again); data prep takes its fingerprint as an input. So data prep and every step after
it are cache hits exactly when the data (and the settings) did not change, and run again when
one photo did. The runners submit with the compiled per-task settings (``enable_caching=None``)."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

from kfp import dsl

from tlp.components.catalogue import COMPONENTS, TUNING_COMPONENTS
from tlp.components.container_images import image_reference
from tlp.components.deployment import add_deploy_step, deployment
from tlp.components.lib.settings import (
    CloudOptions,
    DeployOptions,
    HardwareOptions,
    ImageOptions,
    LiteRTOptions,
    TrackingOptions,
    pipeline_options,
)
from tlp.components.lib.steps import (
    DATA_CHECKS,
    DATA_FINGERPRINT,
    DATA_PREP,
    EVALUATION,
    FEATURE_EXTRACTION,
    FEATURE_EXTRACTION_HEADS,
    FINE_TUNING,
    FINE_TUNING_TRIAL,
    LITERT_EXPORT,
    REGISTRATION,
    TRIAL_SELECTION,
    VIZIER_SELECTION,
    VIZIER_WORKER_POOLS,
    step,
)
from tlp.components.lib.tuning import TuningPlan

PIPELINE_NAME = "transfer-learning"
DEFAULT_MACHINE_TYPE = "n1-standard-8"
# A retried training step finds its per-epoch checkpoints (BackupAndRestore) and resumes after the
# last finished epoch; the pause lets a stock-out or preemption pass.
RETRY_BACKOFF = "120s"
RETRY_BACKOFF_FACTOR = 2.0
# Where the fingerprint step saves a gs:// folder's listing for data prep (one listing per run, not
# two); the same value every run, so it leaves data prep's cache key as it was.
LISTING_FOLDER = f"{dsl.PIPELINE_ROOT_PLACEHOLDER}/listings"


def _on_hardware(op, hardware: HardwareOptions, cloud: CloudOptions, tensorboard: str = "",
                 display_name: str = FINE_TUNING):
    """A model-pass component (fine-tuning, feature extraction, evaluation, registration), wrapped
    as a custom job when the hardware (or a Vertex AI TensorBoard, which only custom jobs can
    write to) asks for one: ``hardware.replicas`` machines of ``machine_type`` with ``gpus`` GPUs
    each; replicas beyond the first get TF_CONFIG and the step's pass divides over all of them."""
    if not hardware.as_custom_job and not tensorboard:
        return op
    from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component

    return create_custom_training_job_from_component(
        op,
        display_name=display_name,
        replica_count=hardware.replicas,
        machine_type=hardware.machine_type or DEFAULT_MACHINE_TYPE,
        accelerator_type=hardware.accelerator if hardware.gpus else "",
        accelerator_count=hardware.gpus if hardware.gpus else 1,
        # BackupAndRestore resumes from the last epoch when Vertex AI restarts a preempted worker.
        restart_job_on_worker_restart=True,
        # Spot VMs cost less and may be preempted: the restart above and the step's retries cover it.
        strategy="SPOT" if hardware.spot else "STANDARD",
        # A custom job does not inherit the pipeline's identity or network: pass them on.
        service_account=cloud.service_account,
        network=cloud.network,
        tensorboard=tensorboard,
    )


def _with_tensorboard(head_op, cloud: CloudOptions, tensorboard: str):
    """The feature-extraction component as a custom job writing to a Vertex AI TensorBoard."""
    if not tensorboard:
        return head_op
    from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component

    return create_custom_training_job_from_component(
        head_op, display_name=FEATURE_EXTRACTION, machine_type=DEFAULT_MACHINE_TYPE,
        restart_job_on_worker_restart=True, service_account=cloud.service_account, network=cloud.network,
        tensorboard=tensorboard,
    )


def _feature_extraction_op(images: ImageOptions, hardware: HardwareOptions, cloud: CloudOptions, tensorboard: str):
    """Feature extraction where its forward pass (train + val) runs: on the run's GPUs and
    machines when it has any (as fine-tuning), else on the default machine (with a TensorBoard,
    as a custom job of one default machine, as before)."""
    op = _op(FEATURE_EXTRACTION, images)
    if hardware.gpus or hardware.as_custom_job:
        return _on_hardware(op, hardware, cloud, tensorboard, display_name=FEATURE_EXTRACTION)
    return _with_tensorboard(op, cloud, tensorboard)


def _pass_op(name: str, images: ImageOptions, hardware: HardwareOptions, cloud: CloudOptions):
    """Evaluation or registration where its model pass runs: with GPUs, in the training image
    (TensorFlow with CUDA) on the run's accelerator machines. Registration registers once, so it
    runs on one such machine (``one_machine``: its pass over that machine's GPUs); evaluation on
    all of them."""
    if not (hardware.gpus or hardware.as_custom_job):
        return _op(name, images)
    return _on_hardware(_op(name, images, kind="train"), hardware, cloud, display_name=name)


def _heads_op(images: ImageOptions, hardware: HardwareOptions, cloud: CloudOptions):
    """A tuned run's feature extraction (its forward pass, then one head per head setting) on one
    of the run's accelerator machines, over that machine's GPUs: it trains several heads from one
    pass, which stays in one process."""
    op = _op(FEATURE_EXTRACTION_HEADS, images)
    if not (hardware.gpus or hardware.as_custom_job):
        return op
    return _on_hardware(op, one_machine(hardware), cloud, display_name=FEATURE_EXTRACTION_HEADS)


def one_machine(hardware: HardwareOptions) -> HardwareOptions:
    """The hardware of a step that must run once (registration): one of the run's machines."""
    return dataclasses.replace(hardware, replicas=1)


def _tensorboard_output(step_name: str) -> dict:
    """Where a custom job with a TensorBoard keeps its outputs: Vertex AI sets the step's
    AIP_TENSORBOARD_LOG_DIR below it and uploads what is written there. One per run and step."""
    return {"base_output_directory": f"{dsl.PIPELINE_ROOT_PLACEHOLDER}/{dsl.PIPELINE_JOB_ID_PLACEHOLDER}/{step_name}"}


@dataclass(frozen=True)
class Trained:
    """What evaluation and registration take from training: the model and both phases' histories."""

    model: object
    feature_history: object
    fine_tune_history: object


def on_training_hardware(task, hardware: HardwareOptions, tensorboard: str = "") -> None:
    """GPUs for a model-pass task that is not a custom job (a custom job names its own machine;
    with a TensorBoard, fine-tuning and feature extraction are custom jobs)."""
    if hardware.gpus and not hardware.as_custom_job and not tensorboard:
        task.set_accelerator_type(hardware.accelerator).set_accelerator_limit(hardware.gpus)


def with_retries(tasks, hardware: HardwareOptions) -> None:
    if hardware.retries:
        for training in tasks:
            training.set_retry(num_retries=hardware.retries, backoff_duration=RETRY_BACKOFF,
                               backoff_factor=RETRY_BACKOFF_FACTOR)


def _op(name: str, images: ImageOptions, kind: str = ""):
    """The step's component, set to run in its image (or the image of ``kind``)."""
    component = {**COMPONENTS, **TUNING_COMPONENTS}[name]
    image = image_reference(images.image_repo, images.image_tag or None, kind=kind or step(name).image)
    return dsl.component(component.python_func, base_image=image, install_kfp_package=False)


def _parameters() -> inspect.Signature:
    """The pipeline's signature, generated from the option declarations."""
    return inspect.Signature([
        inspect.Parameter(opt.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=opt.pipeline_default,
                          annotation=opt.type)
        for opt in pipeline_options()
    ])


def create_pipeline(
    images: ImageOptions | None = None, hardware: HardwareOptions | None = None, cloud: CloudOptions | None = None,
    deploy: DeployOptions | None = None,
    tracking: TrackingOptions | None = None,
    tuning: TuningPlan | None = None,
    litert: LiteRTOptions | None = None,
):
    """Builds the pipeline. ``images`` chooses the component images, ``hardware`` (and the
    service account and network of ``cloud``) where fine-tuning runs on Vertex AI; with
    ``deploy.deploy_endpoint`` a new champion is deployed to that Vertex AI endpoint, and
    ``tracking.tensorboard`` is the Vertex AI TensorBoard both training steps write to. With
    ``tuning`` (``--tune``), the trials fan out in a ParallelFor (``tuned_steps``) and, on Vertex
    AI, become runs of the ``tracking.experiment`` experiment (``trial_experiment``). With
    ``litert.export_litert`` (``--export-litert``), the registered model's LiteRT variants are
    converted, scored, gated and recorded with the version (``litert-export``, after registration)."""
    images, hardware, cloud = images or ImageOptions(), hardware or HardwareOptions(), cloud or CloudOptions()
    fingerprint_op, checks_op = _op(DATA_FINGERPRINT, images), _op(DATA_CHECKS, images)
    deploy = deploy or DeployOptions()
    deploy_op = dsl.component(
        deployment.python_func, install_kfp_package=False,
        base_image=image_reference(images.image_repo, images.image_tag or None, kind="light"),
    )
    tensorboard = (tracking or TrackingOptions()).tensorboard
    prep_op = _op(DATA_PREP, images)
    head_op = _feature_extraction_op(images, hardware, cloud, tensorboard)
    tune_op = _on_hardware(_op(FINE_TUNING, images), hardware, cloud, tensorboard)
    head_extra = _tensorboard_output(FEATURE_EXTRACTION) if tensorboard else {}
    tune_extra = _tensorboard_output(FINE_TUNING) if tensorboard else {}
    eval_op, register_op = _pass_op(EVALUATION, images, hardware, cloud), _pass_op(
        REGISTRATION, images, one_machine(hardware), cloud,
    )
    names = [opt.name for opt in pipeline_options()]
    litert = litert or LiteRTOptions()
    litert_op = _op(LITERT_EXPORT, images) if litert.export_litert else None

    def transfer_learning(*values, **named):
        parameters = {**dict(zip(names, values, strict=False)), **named}

        def options(step_name: str) -> dict:
            return {opt.name: parameters[opt.name] for opt in pipeline_options() if step_name in opt.spec.steps}

        # Never cached: it is what tells a cache whether the data changed.
        source = fingerprint_op(options=options(DATA_FINGERPRINT), listing_folder=LISTING_FOLDER)
        source.set_display_name(DATA_FINGERPRINT).set_caching_options(False)
        prep = prep_op(options=options(DATA_PREP), source_fingerprint=source.outputs["fingerprint"],
                       listing_folder=LISTING_FOLDER)
        prep.set_display_name(DATA_PREP)
        checked = checks_op(dataset=prep.outputs["dataset"], options=options(DATA_CHECKS))
        checked.set_display_name(DATA_CHECKS)
        if tuning is not None:  # --tune: every trial, then the best
            trained = tuned_steps(
                tuning, images, hardware, cloud, tensorboard, prep.outputs["dataset"], checked,
                options(FEATURE_EXTRACTION), options(FINE_TUNING), trial_experiment(cloud, tracking),
            )
        else:
            head = head_op(dataset=prep.outputs["dataset"], options=options(FEATURE_EXTRACTION), **head_extra)
            head.after(checked)
            head.set_display_name(FEATURE_EXTRACTION)
            tuned = tune_op(
                dataset=prep.outputs["dataset"], base_model=head.outputs["model"], options=options(FINE_TUNING),
                **tune_extra,
            ).set_display_name(FINE_TUNING)
            on_training_hardware(tuned, hardware)
            on_training_hardware(head, hardware, tensorboard)
            with_retries((head, tuned), hardware)
            trained = Trained(tuned.outputs["model"], head.outputs["history"], tuned.outputs["history"])
        scored = eval_op(
            dataset=prep.outputs["dataset"], model=trained.model,
            feature_history=trained.feature_history, fine_tune_history=trained.fine_tune_history,
            options=options(EVALUATION), data_checks=checked.outputs["findings"],
        ).set_display_name(EVALUATION)
        on_training_hardware(scored, hardware)
        with dsl.If(scored.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
            registered = register_op(
                model=trained.model, dataset=prep.outputs["dataset"],
                metrics=scored.outputs["metrics"], report=scored.outputs["report"], options=options(REGISTRATION),
            ).set_display_name(REGISTRATION)
            on_training_hardware(registered, one_machine(hardware))
            if litert_op is not None:  # after the gate and registration: the variants join that version
                litert_op(
                    model=trained.model, dataset=prep.outputs["dataset"],
                    registered_report=registered.outputs["registered_report"],
                    registry=registered.outputs["registry"], name=registered.outputs["name"],
                    version=registered.outputs["version"], variants=litert.export_litert,
                    max_quantization_drop=litert.max_quantization_drop,
                ).set_display_name(LITERT_EXPORT)
            if deploy.deploy_endpoint:  # TFX Pusher: only a new champion is deployed
                add_deploy_step(registered, registered.outputs["registry"], deploy_op, deploy, cloud)

    transfer_learning.__signature__ = _parameters()  # type: ignore[attr-defined]  # functions take attributes; kfp reads the parameters from the signature
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description="Transfer learning from an ImageNet ConvNet: data fingerprint, data prep, data checks, "
        "feature extraction, fine-tuning, evaluation with an overfitting gate, registration.",
    )(transfer_learning)


# --- a tuned run (--tune): the grid is known at compile time, so the trials are the ParallelFor's
# items (a constant list) and the distinct head settings are known too: one feature-extraction-heads
# task runs the base once and trains one head per head setting; each trial fine-tunes on the
# fine-tuning hardware, ``parallelism`` at a time; dsl.Collected hands every trial's model to the
# selection step, whose copy of the best goes on to evaluation and registration.

TRIALS_LOOP = "trials"
VIZIER_METRIC = "val_accuracy"
VIZIER_JOB_NAME = "fine-tuning-trials"


def trial_experiment(cloud: CloudOptions, tracking: TrackingOptions | None) -> dict:
    """The selection step's parameters saying where it logs each trial as a Vertex AI Experiments
    run: the run's experiment (``--experiment``, default the pipeline's name, as ``tlp submit``
    adds the pipeline run to it) when the pipeline is built for a Vertex AI project (``tlp
    submit``, ``tlp schedule``). Empty otherwise, and nothing is logged: ``tlp compile`` knows no
    project, Kubeflow Pipelines has no Vertex AI Experiments, and a local run records its trials
    as MLflow child runs."""
    if not (cloud.on_vertex and cloud.project):
        return {"project": "", "location": "", "experiment": "", "api_endpoint": "", "pipeline_job_id": ""}
    return {
        "project": cloud.project, "location": cloud.region,
        "experiment": (tracking or TrackingOptions()).experiment or PIPELINE_NAME,
        "api_endpoint": cloud.api_endpoint, "pipeline_job_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    }


def tuned_steps(
    plan: TuningPlan, images: ImageOptions, hardware: HardwareOptions, cloud: CloudOptions, tensorboard: str,
    dataset, checked, head_options: dict, tune_options: dict, experiment: dict,
) -> Trained:
    """Heads, the trials' ParallelFor and the selection; returns what evaluation takes.
    ``experiment``: the selection's Vertex AI Experiments parameters (``trial_experiment``)."""
    if plan.tuner == "vizier":
        return vizier_steps(plan, images, hardware, cloud, dataset, checked, head_options, tune_options, experiment)
    heads = _heads_op(images, hardware, cloud)(
        dataset=dataset, options=head_options, head_settings=plan.head_settings,
    ).set_display_name(FEATURE_EXTRACTION_HEADS)
    heads.after(checked)
    on_training_hardware(heads, one_machine(hardware))
    trial_op = _on_hardware(_op(FINE_TUNING_TRIAL, images), hardware, cloud, tensorboard)
    extra = _tensorboard_output(FINE_TUNING_TRIAL) if tensorboard else {}
    with dsl.ParallelFor(list(plan.trials), parallelism=plan.parallelism, name=TRIALS_LOOP) as trial:
        run = trial_op(dataset=dataset, heads=heads.outputs["heads"], options=tune_options, trial=trial, **extra)
        run.set_display_name(FINE_TUNING_TRIAL)
        on_training_hardware(run, hardware)
    with_retries((heads, run), hardware)
    chosen = _op(TRIAL_SELECTION, images)(trials=dsl.Collected(run.outputs["model"]), **experiment)
    chosen.set_display_name(TRIAL_SELECTION)
    return Trained(chosen.outputs["model"], chosen.outputs["feature_history"], chosen.outputs["history"])


def search_space(plan: TuningPlan) -> list:
    """The grid as Vizier parameters: each tuned option a discrete parameter over its values."""
    from google.cloud.aiplatform import hyperparameter_tuning as hpt
    from google_cloud_pipeline_components.v1.hyperparameter_tuning_job import serialize_parameters

    return serialize_parameters({
        name: hpt.DiscreteParameterSpec(values=[float(value) for value in values], scale="linear")
        for name, values in plan.grid.items()
    })


def vizier_failed_trial_limit(retries: int) -> int:
    """The tuning job's ``max_failed_trial_count`` for ``--retries``: Vertex AI fails the job on
    seeing that many failed trials, so ``retries`` failed trials are allowed and one more ends it."""
    return retries + 1


def vizier_steps(
    plan: TuningPlan, images: ImageOptions, hardware: HardwareOptions, cloud: CloudOptions, dataset, checked,
    head_options: dict, tune_options: dict, experiment: dict,
) -> Trained:
    """``--tuner vizier``: fine-tuning as a Vertex AI hyperparameter tuning job (GCPC's
    HyperparameterTuningJobRunOp) over the grid's space, ``plan.count`` trials, ``parallelism`` at
    once. Each trial (``tlp.components.vizier_trial``, in the training image) writes its model and
    trial.json below the job's output directory and reports val_accuracy; the selection step reads
    them back (and logs them to ``experiment``, as ``tuned_steps``' selection does)."""
    from google_cloud_pipeline_components.v1.hyperparameter_tuning_job import (
        HyperparameterTuningJobRunOp,
        serialize_metrics,
    )

    heads = _heads_op(images, hardware, cloud)(
        dataset=dataset, options=head_options, head_settings=plan.heads_ahead,  # [] when trials train their own
    ).set_display_name(FEATURE_EXTRACTION_HEADS)
    heads.after(checked)
    on_training_hardware(heads, one_machine(hardware))
    with_retries((heads,), hardware)
    pools = _op(VIZIER_WORKER_POOLS, images)(
        dataset=dataset, heads=heads.outputs["heads"], options=tune_options,
        image=image_reference(images.image_repo, images.image_tag or None, kind="train"),
        machine_type=hardware.machine_type or DEFAULT_MACHINE_TYPE,
        accelerator_type=hardware.accelerator if hardware.gpus else "", accelerator_count=hardware.gpus,
    ).set_display_name(VIZIER_WORKER_POOLS)
    root = f"{dsl.PIPELINE_ROOT_PLACEHOLDER}/{dsl.PIPELINE_JOB_ID_PLACEHOLDER}/{VIZIER_JOB_NAME}"
    job = HyperparameterTuningJobRunOp(
        display_name=VIZIER_JOB_NAME, base_output_directory=root, worker_pool_specs=pools.output,
        study_spec_metrics=serialize_metrics({VIZIER_METRIC: "maximize"}), study_spec_parameters=search_space(plan),
        max_trial_count=plan.count, parallel_trial_count=plan.parallelism,
        # Vertex fails the whole job on seeing this many failed trials (0: Vertex decides), so --retries N
        # lets N trials fail and the job go on (with N there, --retries 1 failed it at the first).
        max_failed_trial_count=vizier_failed_trial_limit(hardware.retries), location=cloud.region or "us-central1",
        study_spec_algorithm="GRID_SEARCH" if not plan.trial_count else "ALGORITHM_UNSPECIFIED",
        service_account=cloud.service_account, network=cloud.network,
    ).set_display_name(VIZIER_JOB_NAME)
    chosen = _op(VIZIER_SELECTION, images)(trials_root=root, expected_trials=plan.count, **experiment)
    chosen.after(job).set_display_name(VIZIER_SELECTION)
    return Trained(chosen.outputs["model"], chosen.outputs["feature_history"], chosen.outputs["history"])
