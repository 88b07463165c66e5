"""``--tune`` on the runner side: the trials of a run, checked before anything starts (the
factory lays them out: ``training.tuned_steps``)."""

from __future__ import annotations

from tlp.components.lib import specs, tuning
from tlp.components.lib.model import base_layer_count
from tlp.components.lib.settings import CloudOptions, Settings, TuneOptions
from tlp.components.lib.tuning import TuningPlan


def plan_tuning(chosen: TuneOptions, settings: Settings) -> TuningPlan | None:
    """The trials of ``--tune`` (None without it): parsed and checked by the options' declarations."""
    return tuning.plan(chosen.tune, chosen.tune_trials, settings.training.seed, chosen.tune_parallelism,
                       chosen.tuner)


def check_trials(plan: TuningPlan | None, settings: Settings, cloud: CloudOptions | None = None) -> TuningPlan | None:
    """Each trial's settings pass the rules across options, and every tuned cut leaves a layer of
    the base to train; the Vizier tuner needs Vertex AI. Runs before anything starts."""
    if plan is None:
        return None
    if plan.tuner == "vizier" and cloud is not None and not cloud.on_vertex:  # compile: cloud unknown yet
        raise specs.ConfigError("--tuner vizier runs a Vertex AI hyperparameter tuning job; drop --kfp-host or "
                                "use --tuner grid.")
    for trial in plan.trials:
        Settings.from_values({**settings.values(), **trial})
    cuts = sorted(set(plan.grid.get("fine_tune_at", ())))
    if cuts and any(trial.get("fine_tune_epochs", settings.fine_tuning.fine_tune_epochs) for trial in plan.trials):
        model = settings.model
        count = base_layer_count(model.base, model.alpha, model.image_size)
        for cut in cuts:
            specs.check_fine_tune_at(cut, count, model.base)
    return plan
