"""The steps of a tuned run (``--tune``), as the factory lays them out in ``training.py``.

The grid is known when the pipeline is compiled, so its trials are the ParallelFor's items (a
constant list) and the distinct head settings are known too: one feature-extraction-heads task
runs the base over the images once and trains one head per head setting. Each trial fine-tunes
its head on the fine-tuning hardware (GPUs, Spot, retries as for a single run), ``parallelism``
at a time; ``dsl.Collected`` hands every trial's model to the selection step, whose copy of the
best model goes on to evaluation and registration.
"""

from __future__ import annotations

from kfp import dsl

from tlp.components.lib import specs, tuning
from tlp.components.lib.settings import CloudOptions, HardwareOptions, ImageOptions, Settings, TuneOptions
from tlp.components.lib.steps import FEATURE_EXTRACTION_HEADS, FINE_TUNING_TRIAL, TRIAL_SELECTION
from tlp.components.lib.tuning import TuningPlan
from tlp.pipelines.training import Trained, _on_hardware, _op, _tensorboard_output, on_training_hardware, with_retries

TRIALS_LOOP = "trials"


def plan_tuning(chosen: TuneOptions, settings: Settings) -> TuningPlan | None:
    """The trials of ``--tune`` (None without it): parsed and checked by the options' declarations."""
    return tuning.plan(chosen.tune, chosen.tune_trials, settings.training.seed, chosen.tune_parallelism,
                       chosen.tuner)


def check_trials(plan: TuningPlan | None, settings: Settings, cloud: CloudOptions | None = None) -> TuningPlan | None:
    """Each trial's settings pass the rules across options, and every tuned cut leaves a layer of
    the base to train; the Vizier tuner needs Vertex AI. Runs before anything starts."""
    if plan is None:
        return None
    if plan.tuner == "vizier" and (cloud is None or not cloud.on_vertex):
        if cloud is not None:
            raise specs.ConfigError("--tuner vizier runs a Vertex AI hyperparameter tuning job; drop --kfp-host or "
                                    "use --tuner grid.")
    for trial in plan.trials:
        Settings.from_values({**settings.values(), **trial})
    cuts = sorted(set(plan.grid.get("fine_tune_at", ())))
    if cuts and any(trial.get("fine_tune_epochs", settings.fine_tuning.fine_tune_epochs) for trial in plan.trials):
        from tlp.components.lib.model import base_layer_count

        model = settings.model
        count = base_layer_count(model.base, model.alpha, model.image_size)
        for cut in cuts:
            specs.check_fine_tune_at(cut, count, model.base)
    return plan


def tuned_steps(
    plan: TuningPlan, images: ImageOptions, hardware: HardwareOptions, cloud: CloudOptions, tensorboard: str,
    dataset, checked, head_options: dict, tune_options: dict,
) -> Trained:
    """Heads, the trials' ParallelFor and the selection; returns what evaluation takes."""
    if plan.tuner == "vizier":
        from tlp.pipelines.vizier import vizier_steps

        return vizier_steps(plan, images, hardware, cloud, dataset, checked, head_options, tune_options)
    heads = _op(FEATURE_EXTRACTION_HEADS, images)(
        dataset=dataset, options=head_options, head_settings=plan.head_settings,
    ).set_display_name(FEATURE_EXTRACTION_HEADS)
    heads.after(checked)
    trial_op = _on_hardware(_op(FINE_TUNING_TRIAL, images), hardware, cloud, tensorboard)
    extra = _tensorboard_output(FINE_TUNING_TRIAL) if tensorboard else {}
    with dsl.ParallelFor(list(plan.trials), parallelism=plan.parallelism, name=TRIALS_LOOP) as trial:
        run = trial_op(dataset=dataset, heads=heads.outputs["heads"], options=tune_options, trial=trial, **extra)
        run.set_display_name(FINE_TUNING_TRIAL)
        on_training_hardware(run, hardware)
    with_retries((heads, run), hardware)
    chosen = _op(TRIAL_SELECTION, images)(trials=dsl.Collected(run.outputs["model"]))
    chosen.set_display_name(TRIAL_SELECTION)
    return Trained(chosen.outputs["model"], chosen.outputs["feature_history"], chosen.outputs["history"])
