"""Experiment tracking of local runs: each run becomes one MLflow run in the registry's store, so
``mlflow ui --backend-store-uri sqlite:///tlp-runs/registry.db`` lists and compares runs.

A run records its settings as parameters, both training phases' per-epoch loss and accuracy as
metric histories (``epoch_loss``, ``epoch_val_accuracy``...: step = epoch, fine-tuning continuing
phase 1's numbers), the evaluation
metrics, the gate's decision and reasons, each step's seconds, and the report, the summary and
the step logs as artifacts. When the run registered a new model version, the MLflow run that
registration created for it *is* the run's record (completed here), so the version links to it
natively; otherwise (gate failed, or the same model registered before) a new run is created and
tagged with the version it points to.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from tlp.components.lib import specs
from tlp.components.lib.registry import MlflowRegistry
from tlp.components.lib.settings import Settings
from tlp.components.lib.steps import FEATURE_EXTRACTION, FINE_TUNING, TRIAL_SELECTION
from tlp.pipelines.summary import task_outputs

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
PIPELINE_RUN_TAG = "tlp.run_dir"
MAX_PARAM_LENGTH = 6000  # MLflow's limit for a parameter value


def tracking_uri(registry: str, local_default: str) -> str:
    """The MLflow store a local run is tracked in: the registry's when it is MLflow, else the
    local default (a Vertex AI registry has no MLflow store)."""
    return local_default if registry.startswith(specs.VERTEX_SCHEME) else registry


def _history(run_dir: str, step: str, key: str = "history") -> dict | None:
    outputs = task_outputs(run_dir, step)
    if not outputs or key not in outputs["artifacts"]:
        return None
    path = outputs["artifacts"][key]["uri"]
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _registered_run(client, summary: dict, started_ms: int):
    """The MLflow run registration created for this pipeline run's new version, or None."""
    registered = summary.get("registered")
    if not registered or not registered["registry"].startswith(("sqlite:", "http:", "https:", "databricks")):
        return None
    version = client.get_model_version(registered["name"], registered["version"])
    if not version.run_id:
        return None
    run = client.get_run(version.run_id)
    fresh = run.info.start_time >= started_ms and PIPELINE_RUN_TAG not in run.data.tags
    return run if fresh else None


def track_run(summary: dict, settings: Settings, uri: str, experiment: str, started: float) -> dict:
    """Records the finished local run ``summary`` in the MLflow store at ``uri``, experiment
    ``experiment``. ``started``: the run's start (seconds since the epoch). Returns where it went."""
    from mlflow.entities import Metric, Param, RunTag

    registry = MlflowRegistry(uri)  # a ready client; its lock serialises SQLite writers
    client = registry.client
    started_ms = int(started * 1000)
    run_dir = summary["run_dir"]
    name = os.path.basename(run_dir)
    with registry.lock():
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            location = None
            if uri.startswith("sqlite:///"):  # artifacts beside the database, as the registry keeps them
                location = "file://" + os.path.join(os.path.dirname(uri[len("sqlite:///"):]), "artifacts")
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        run = _registered_run(client, summary, started_ms)
        adopted = run is not None and run.info.experiment_id == experiment_id
        if not adopted:
            run = client.create_run(experiment_id, start_time=started_ms, run_name=name)
    run_id = run.info.run_id
    present_params, present_metrics = set(run.data.params), set(run.data.metrics)

    params = {key: str(value)[:MAX_PARAM_LENGTH] for key, value in settings.values().items()}
    params.update({"data_resolved": summary["data"]["spec"], "class_names": json.dumps(summary["data"]["class_names"])})
    metrics: list = []
    timestamp = started_ms
    for step, tuned_key in ((FEATURE_EXTRACTION, "feature_history"), (FINE_TUNING, "history")):
        history = _history(run_dir, step) or _history(run_dir, TRIAL_SELECTION, tuned_key) or {}
        for key in HISTORY_KEYS:
            for epoch, value in zip(history.get("epoch", []), history.get(key, []), strict=False):
                # epoch_*: TensorBoard's names, apart from the evaluation's val_accuracy etc.
                metrics.append(Metric(f"epoch_{key}", float(value), timestamp, int(epoch)))
    final = {key: value for key, value in summary["metrics"].items() if isinstance(value, (int, float))}
    final["gate_passed"] = 1.0 if summary["gate"]["passed"] else 0.0
    if (summary.get("checks") or {}).get("image_drift_auc") is not None:  # the new photos vs the champion's
        final["image_drift_auc"] = summary["checks"]["image_drift_auc"]
    final.update({f"seconds_{step}": seconds for step, seconds in summary["steps"].items() if seconds is not None})
    metrics += [Metric(key, float(value), timestamp, 0) for key, value in final.items() if key not in present_metrics]
    registered = summary.get("registered")
    tags = {
        "mlflow.runName": name,
        PIPELINE_RUN_TAG: run_dir,
        "gate": "passed" if summary["gate"]["passed"] else "failed",
        "gate.reasons": "\n".join(summary["gate"]["reasons"]),
        "augment": summary.get("augment") or "none",
        "tensorboard": summary.get("tensorboard", ""),
        "registered": (f"{registered['name']}/{registered['version']}" + (" (champion)" if registered["champion"]
                                                                           else "")) if registered else "nothing",
    }
    if registered:
        tags["registered.registry"] = registered["registry"]
        tags["registered.reason"] = registered["reason"]
    client.log_batch(
        run_id,
        params=[Param(key, value) for key, value in params.items() if key not in present_params],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )
    for first in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[first:first + 1000])
    _log_artifacts(client, run_id, summary)
    _track_trials(client, experiment_id, run_id, summary, started_ms)
    if not adopted:
        client.set_terminated(run_id, "FINISHED")
    return {"uri": uri, "experiment": experiment, "run_id": run_id, "linked_version": adopted}


def _log_artifacts(client, run_id: str, summary: dict) -> None:
    """The report (as report.html, so the MLflow UI shows it), the summary and the step logs."""
    with tempfile.TemporaryDirectory(prefix="tlp-track-") as scratch:
        report = os.path.join(scratch, "report.html")
        shutil.copyfile(summary["report"], report)
        client.log_artifact(run_id, report)
        summary_path = os.path.join(scratch, "summary.json")
        with open(summary_path, "w") as handle:
            json.dump(summary, handle, indent=2)
        client.log_artifact(run_id, summary_path)
    if os.path.isdir(summary.get("logs", "")):
        client.log_artifacts(run_id, summary["logs"], "logs")


def _track_trials(client, experiment_id: str, parent_id: str, summary: dict, started_ms: int) -> list[str]:
    """A tuned run's trials as MLflow child runs of the run (``mlflow.parentRunId``): each with its
    parameters, validation accuracy and loss, seconds and validation curve. Returns their IDs."""
    from mlflow.entities import Metric, Param, RunTag

    tuned = summary.get("tuning")
    if not tuned:
        return []
    best, ids = tuned["best"]["params"], []
    for index, trial in enumerate(tuned["trials"]):
        child = client.create_run(experiment_id, start_time=started_ms, run_name=f"trial-{index}", tags={
            "mlflow.parentRunId": parent_id, "tlp.trial": str(index), "tlp.best": str(trial["params"] == best)})
        metrics = [Metric(key, float(trial[key]), started_ms, 0) for key in ("val_accuracy", "val_loss", "seconds")]
        metrics += [Metric("epoch_val_accuracy", float(value), started_ms, epoch)
                    for epoch, value in enumerate(trial.get("val_curve", []), start=1)]
        client.log_batch(child.info.run_id, metrics=metrics,
                         params=[Param(key, str(value)) for key, value in trial["params"].items()],
                         tags=[RunTag("mlflow.runName", f"trial-{index}")])
        client.set_terminated(child.info.run_id, "FINISHED")
        ids.append(child.info.run_id)
    return ids
