"""``--tuner vizier``: fine-tuning as a Vertex AI hyperparameter tuning job (GCPC's
HyperparameterTuningJobRunOp) over the same search space as the grid, ``--tune-trials`` trials
(default: the grid's size), ``--tune-parallelism`` at once. Data prep, the data checks and the
heads are shared as in a grid run; each trial (``tlp.components.vizier_trial``) writes its model
and ``trial.json`` below the job's output directory and reports ``val_accuracy`` to Vizier; the
selection step reads them back and the best goes on to evaluation and registration."""

from __future__ import annotations

from kfp import dsl

from tlp.components.lib.settings import CloudOptions, HardwareOptions, ImageOptions
from tlp.components.lib.steps import FEATURE_EXTRACTION_HEADS, VIZIER_SELECTION, VIZIER_WORKER_POOLS
from tlp.components.lib.tuning import TuningPlan
from tlp.components.lib.version import image_reference
from tlp.pipelines.training import DEFAULT_MACHINE_TYPE, Trained, _op, with_retries

METRIC = "val_accuracy"
JOB_NAME = "fine-tuning-trials"


def search_space(plan: TuningPlan) -> list:
    """The grid as Vizier parameters: each tuned option a discrete parameter over its values."""
    from google.cloud.aiplatform import hyperparameter_tuning as hpt
    from google_cloud_pipeline_components.v1.hyperparameter_tuning_job import serialize_parameters

    return serialize_parameters({
        name: hpt.DiscreteParameterSpec(values=[float(value) for value in values], scale="linear")
        for name, values in plan.grid.items()
    })


def vizier_steps(
    plan: TuningPlan, images: ImageOptions, hardware: HardwareOptions, cloud: CloudOptions, dataset, checked,
    head_options: dict, tune_options: dict,
) -> Trained:
    from google_cloud_pipeline_components.v1.hyperparameter_tuning_job import (
        HyperparameterTuningJobRunOp,
        serialize_metrics,
    )

    heads = _op(FEATURE_EXTRACTION_HEADS, images)(
        dataset=dataset, options=head_options, head_settings=plan.head_settings,
    ).set_display_name(FEATURE_EXTRACTION_HEADS)
    heads.after(checked)
    with_retries((heads,), hardware)
    pools = _op(VIZIER_WORKER_POOLS, images)(
        dataset=dataset, heads=heads.outputs["heads"], options=tune_options,
        image=image_reference(images.image_repo, images.image_tag or None, kind="train"),
        machine_type=hardware.machine_type or DEFAULT_MACHINE_TYPE,
        accelerator_type=hardware.accelerator if hardware.gpus else "", accelerator_count=hardware.gpus,
    ).set_display_name(VIZIER_WORKER_POOLS)
    root = f"{dsl.PIPELINE_ROOT_PLACEHOLDER}/{dsl.PIPELINE_JOB_ID_PLACEHOLDER}/{JOB_NAME}"
    job = HyperparameterTuningJobRunOp(
        display_name=JOB_NAME, base_output_directory=root, worker_pool_specs=pools.output,
        study_spec_metrics=serialize_metrics({METRIC: "maximize"}), study_spec_parameters=search_space(plan),
        max_trial_count=plan.count, parallel_trial_count=plan.parallelism,
        # A failed trial is retried by Vizier up to this many times in all, as --retries does for a step.
        max_failed_trial_count=hardware.retries, location=cloud.region or "us-central1",
        study_spec_algorithm="GRID_SEARCH" if not plan.trial_count else "ALGORITHM_UNSPECIFIED",
        service_account=cloud.service_account, network=cloud.network,
    ).set_display_name(JOB_NAME)
    chosen = _op(VIZIER_SELECTION, images)(trials_root=root).after(job).set_display_name(VIZIER_SELECTION)
    return Trained(chosen.outputs["model"], chosen.outputs["feature_history"], chosen.outputs["history"])
