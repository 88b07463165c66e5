"""The summary that ends every run: read back from the outputs kfp's local runner wrote."""

from __future__ import annotations

import json
import os
from typing import NamedTuple

from tlp.components.lib import report
from tlp.components.lib.settings import Settings
from tlp.components.lib.specs import NotFound
from tlp.components.lib.steps import (
    DATA_CHECKS,
    DATA_PREP,
    EVALUATION,
    FINE_TUNING,
    LITERT_EXPORT,
    OPTIONAL_STEPS,
    REGISTRATION,
    STEP_NAMES,
    TRIAL_SELECTION,
    TUNING_STEPS,
)
from tlp.components.lib.tuning import label
from tlp.pipelines.console import LOGS


class SummaryField(NamedTuple):
    """One key of the run summary (``tlp run --summary-json``): dotted for a key inside another."""

    name: str
    type: str
    meaning: str


_SPLIT_METRICS = tuple(SummaryField(f"metrics.{split}_{metric}", "number", f"{metric} on the {split} split")
                       for split in ("train", "val", "test") for metric in ("accuracy", "loss", "precision", "recall",
                                                                           "auc"))

# Every key the summary holds, declared once here beside the code that writes it (``summarize``,
# and ``runners.run_local``: wall_seconds, tracking). The docs' reference page is generated from
# this table; tests/pipeline/test_local_run.py checks a real run's summary holds no other key.
SUMMARY_FIELDS: tuple[SummaryField, ...] = (
    SummaryField("data", "object", "the data the run trained on"),
    SummaryField("data.spec", "string", "the `--data` used"),
    SummaryField("data.class_names", "list of strings", "the classes, in label order"),
    SummaryField("data.counts", "object", "photos per split, per class"),
    SummaryField("data.fingerprint", "string", "the prepared data's content fingerprint"),
    SummaryField("data.source_fingerprint", "string", "the listing's fingerprint (names, sizes, times)"),
    SummaryField("data.split", "object", "how the photos were split: `method` and `seed`"),
    SummaryField("data.split_moved", "integer", "photos moved between splits by the balancing rule"),
    SummaryField("data.skipped", "list of objects", "every skipped file with its reason and `kind` (`unreadable`, "
                 "`not_image`, `duplicate` with `duplicate_of`, `conflict` with `conflicts_with`)"),
    SummaryField("checks", "object or null", "the data checks' findings against the champion's data (`passed`, "
                 "`findings`, `champion`, `model`, class shares, `image_drift_auc`), null without that step's output"),
    SummaryField("weights", "string", "the base weights used: `imagenet`, `none` or a file"),
    SummaryField("base", "object", "the base network: `name`, `alpha`, `image_size`"),
    SummaryField("notes", "list of strings", "what `auto` became and similar decisions, as printed in the banner"),
    SummaryField("metrics", "object", "the evaluation step's metrics"),
    *_SPLIT_METRICS,
    SummaryField("metrics.gap", "number", "train - held-out accuracy (the held-out split: validation, or test in "
                 "a tuned run)"),
    SummaryField("metrics.gap_split", "string", "the held-out split of the gap: `val` or `test`"),
    SummaryField("metrics.gap_sample_photos", "integer", "training photos scored for the train accuracy "
                 "(`--gap-sample`)"),
    SummaryField("metrics.train_accuracy_low", "number", "95% interval of the train accuracy, low end"),
    SummaryField("metrics.train_accuracy_high", "number", "95% interval of the train accuracy, high end"),
    SummaryField("metrics.gap_low", "number", "95% interval of the gap, low end"),
    SummaryField("metrics.gap_high", "number", "95% interval of the gap, high end"),
    SummaryField("gate", "object", "the quality gate's decision"),
    SummaryField("gate.passed", "boolean", "whether the model may be registered"),
    SummaryField("gate.reasons", "list of strings", "the gate's conditions as the report states them; a failed "
                 "gate names what failed"),
    SummaryField("gate.max_gap", "number", "the `--max-gap` it was held to"),
    SummaryField("gate.min_accuracy", "number", "the `--min-accuracy` it was held to"),
    SummaryField("gate.gap", "object", "how the gap was measured: `split`, `value`, `train_photos` of "
                 "`train_split_photos`, the sample's `seed`, `train_accuracy_interval`, `interval`, `method` (a 95% "
                 "Newcombe interval); the gate decides on the point estimate"),
    SummaryField("registered", "object or null", "null when nothing was registered"),
    SummaryField("registered.registry", "string", "the registry (MLflow URI or Vertex AI)"),
    SummaryField("registered.name", "string", "the registered model's name"),
    SummaryField("registered.version", "string", "the new version"),
    SummaryField("registered.champion", "boolean", "whether the new version became the champion"),
    SummaryField("registered.reason", "string", "why it did or did not"),
    SummaryField("registered.promote_command", "string", "the command that promotes it, when a person must decide "
                 "(else empty)"),
    SummaryField("registered.infra_validation", "object or null", "the served model's check: `passed`, `reason`, "
                 "`seconds`"),
    SummaryField("replicas", "integer", "replicas in sync during fine-tuning"),
    SummaryField("model", "string", "the servable SavedModel's directory"),
    SummaryField("report", "string", "the HTML report's path"),
    SummaryField("run_dir", "string", "the run's directory"),
    SummaryField("logs", "string", "the folder of the steps' logs"),
    SummaryField("augment", "string", "the `--augment` setting (empty: none)"),
    SummaryField("tensorboard", "string", "the command that shows both training steps' curves"),
    SummaryField("steps", "object", "each step's wall seconds, by step name"),
    SummaryField("tuning", "object", "with `--tune` only: `trials` (each with `params`, `val_accuracy`, `val_loss`, "
                 "`seconds`, its validation curve) and `best`"),
    SummaryField("wall_seconds", "number", "the whole run's wall seconds"),
    SummaryField("tracking", "object or null", "the MLflow run of a local run: `run_id`, `experiment`, `uri`"),
    SummaryField("litert", "object or null", "with `--export-litert` only (else null): the LiteRT variants, as the "
                 "step's `litert.json` holds them"),
    SummaryField("litert.input", "object", "the variants' input: `name`, `shape` [1, H, W, 3], `dtype` uint8, "
                 "`meaning`"),
    SummaryField("litert.output", "object", "the variants' output: `name`, `shape`, `dtype`, `labels` (the labels "
                 "file)"),
    SummaryField("litert.class_names", "list of strings", "the classes, in output order"),
    SummaryField("litert.test_photos", "integer", "test photos every variant and the Keras model were scored on"),
    SummaryField("litert.calibration", "object or null", "int8 only: the `split` (train), `photos` and `seed` it "
                 "calibrated on"),
    SummaryField("litert.keras", "object", "the Keras model on the same photos: `accuracy`, `latency_ms` (one image)"),
    SummaryField("litert.variants", "object", "per variant: `file`, `size_bytes`, `accuracy`, `accuracy_change`, "
                 "`changed_predictions`, `max_probability_difference`, `latency_ms`"),
    SummaryField("litert.failed", "object", "variants whose conversion or scoring failed: the sentence saying why"),
    SummaryField("litert.gate", "object", "`max_quantization_drop`, `passed` (variants), `reasons` (per variant), "
                 "`not_registered`"),
    SummaryField("litert.registered", "object or null", "where the passed variants were recorded: `registry`, "
                 "`name`, `version`, `variants`, `location`"),
    SummaryField("litert.directory", "string", "the folder holding the variants, `labels.txt` and `litert.json`"),
)


def undeclared_keys(summary: dict, fields: tuple[SummaryField, ...] = SUMMARY_FIELDS) -> list[str]:
    """Keys of ``summary`` that ``fields`` does not declare (dotted), looking inside an object
    whenever keys inside it are declared."""
    declared = {field.name for field in fields}

    def walk(value: dict, prefix: str) -> list[str]:
        missing = []
        for key, inner in value.items():
            name = f"{prefix}{key}"
            if name not in declared:
                missing.append(name)
            elif isinstance(inner, dict) and any(other.startswith(name + ".") for other in declared):
                missing += walk(inner, name + ".")
        return missing

    return walk(summary, "")


def task_outputs(run_dir: str, task: str) -> dict | None:
    """Parameters and artifacts a finished task wrote (kfp's executor_output.json)."""
    path = os.path.join(run_dir, task, "executor_output.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        output = json.load(handle)
    artifacts = {
        name: value["artifacts"][0] for name, value in output.get("artifacts", {}).items()
    }
    return {"parameters": output.get("parameterValues", {}), "artifacts": artifacts}


def _finished(run_dir: str, task: str) -> dict:
    """The outputs of a step every finished run has."""
    outputs = task_outputs(run_dir, task)
    if outputs is None:
        raise NotFound(f"{run_dir} has no outputs of the {task} step; summarize a run that finished (tlp run).")
    return outputs


def summarize(run_dir: str, settings: Settings, notes: list[str], step_seconds: dict) -> dict:
    prep = _finished(run_dir, DATA_PREP)
    tuned = task_outputs(run_dir, FINE_TUNING) or _finished(run_dir, TRIAL_SELECTION)  # --tune: the best's
    scored = _finished(run_dir, EVALUATION)
    registered = task_outputs(run_dir, REGISTRATION)
    exported = task_outputs(run_dir, LITERT_EXPORT)
    checked = task_outputs(run_dir, DATA_CHECKS)
    dataset_meta = prep["artifacts"]["dataset"]["metadata"]
    dataset_dir = prep["artifacts"]["dataset"]["uri"]
    with open(os.path.join(dataset_dir, "metadata.json")) as handle:
        full_meta = json.load(handle)
    evaluation = scored["artifacts"]["metrics"]["metadata"]
    gate = scored["artifacts"]["report"]["metadata"]
    return {
        "data": {
            "spec": settings.data.data,
            "class_names": dataset_meta["class_names"],
            "counts": full_meta["counts"],
            "fingerprint": full_meta["fingerprint"],
            "source_fingerprint": full_meta.get("source_fingerprint", ""),
            "split": {key: value for key, value in full_meta.get("split", {}).items() if key != "moved"},
            "split_moved": len(full_meta.get("split", {}).get("moved", [])),
            "skipped": full_meta["skipped"],
        },
        "checks": _findings(checked),
        "weights": settings.model.weights,
        "base": {"name": settings.model.base, "alpha": settings.model.alpha, "image_size": settings.model.image_size},
        "notes": notes,
        "metrics": {
            "train_accuracy": evaluation["train_accuracy"],
            "val_accuracy": evaluation["val_accuracy"],
            "test_accuracy": evaluation["test_accuracy"],
            "gap": evaluation["gap"],
            **evaluation,
        },
        "gate": {
            "passed": bool(scored["parameters"]["Output"]),
            "reasons": gate["gate_reasons"],
            "max_gap": settings.gate.max_gap,
            "min_accuracy": settings.gate.min_accuracy,
            # The split the gap was measured on, the training photos scored and the 95% intervals.
            "gap": gate.get("gap"),
        },
        "registered": (
            {
                "registry": registered["parameters"]["registry"],
                "name": registered["parameters"]["name"],
                "version": registered["parameters"]["version"],
                "champion": bool(registered["parameters"]["champion"]),
                "reason": registered["parameters"]["reason"],
                "promote_command": registered["parameters"].get("promote_command", ""),
                "infra_validation": json.loads(registered["parameters"].get("infra_validation") or "null"),
            }
            if registered
            else None
        ),
        "replicas": int(tuned["parameters"]["replicas"]),
        "model": tuned["artifacts"]["model"]["uri"],
        # After registration, its copy of the report also says which version and why (and the LiteRT table).
        "report": report.page_path(_report_uri(scored, registered, exported)),
        "litert": _litert(exported),
        "run_dir": run_dir,
        "logs": os.path.join(run_dir, LOGS),
        "augment": settings.training.augment,
        # Both training steps write TensorBoard logs beside their outputs (STEP/tensorboard).
        "tensorboard": f"tensorboard --logdir {run_dir}",
        "steps": {name: step_seconds.get(name) for name in (*STEP_NAMES, *TUNING_STEP_NAMES) if name in step_seconds},
        **_tuning(run_dir),
    }


TUNING_STEP_NAMES = tuple(step.name for step in (*TUNING_STEPS, *OPTIONAL_STEPS))


def _report_uri(scored: dict, registered: dict | None, exported: dict | None) -> str:
    if exported:
        return exported["artifacts"]["report"]["uri"]
    return (registered or scored)["artifacts"]["registered_report" if registered else "report"]["uri"]


def _litert(exported: dict | None) -> dict | None:
    """--export-litert: each variant's measurements, which were registered and which not, and why
    (the step's litert.json)."""
    if not exported:
        return None
    directory = exported["artifacts"]["litert"]["uri"]
    with open(os.path.join(directory, "litert.json")) as handle:
        return {**json.load(handle), "directory": directory}


def _tuning(run_dir: str) -> dict:
    """A tuned run's trials (params, val_accuracy, val_loss, seconds, validation curve) and best."""
    chosen = task_outputs(run_dir, TRIAL_SELECTION)
    if not chosen:
        return {}
    with open(chosen["artifacts"]["tuning"]["uri"]) as handle:
        return {"tuning": json.load(handle)}


def _tuning_lines(tuned: dict | None) -> list[str]:
    if not tuned:
        return []
    best = tuned["best"]["params"]
    lines = [f"  tuning    {len(tuned['trials'])} trials; best by validation accuracy goes on:"]
    for trial in tuned["trials"]:
        mark = "*" if trial["params"] == best else " "
        lines.append(f"          {mark} {label(trial['params']):<44} val acc {trial['val_accuracy']:.4f}  "
                     f"val loss {trial['val_loss']:.4f}  {trial['seconds']:.0f}s")
    return lines


def _findings(checked: dict | None) -> dict | None:
    """The data-checks step's findings (its JSON output)."""
    if not checked or "findings" not in checked["artifacts"]:
        return None
    with open(checked["artifacts"]["findings"]["uri"]) as handle:
        return json.load(handle)


def format_summary(summary: dict) -> str:
    metrics, gate = summary["metrics"], summary["gate"]
    lines = [
        "",
        "=" * 72,
        "tlp run: summary",
        f"  data      {summary['data']['spec']}  classes {summary['data']['class_names']}",
        f"            images {json.dumps({s: sum(c.values()) for s, c in summary['data']['counts'].items()})}"
        f", skipped {len(summary['data']['skipped'])}",
        f"  weights   {summary['weights']}  (base {summary['base']['name']}, alpha "
        f"{summary['base']['alpha']}, {summary['base']['image_size']}px)",
        *([f"  augment   {summary['augment']} on the training images: feature extraction ran the frozen base "
             "every epoch (the tutorial's cost; without --augment it runs once per image)"]
          if summary.get("augment") else []),
        *_check_lines(summary.get("checks")),
        *_tuning_lines(summary.get("tuning")),
        f"  accuracy  train {metrics['train_accuracy']:.4f}  val {metrics['val_accuracy']:.4f}  "
        f"test {metrics['test_accuracy']:.4f}  gap {metrics['gap']:.4f}",
        *([f"            {report.describe_gap(gate['gap'])}"] if gate.get("gap") else []),
        f"  gate      {'PASSED' if gate['passed'] else 'FAILED'}",
        *[f"            - {reason}" for reason in gate["reasons"]],
    ]
    registered = summary["registered"]
    if registered:
        champion = " (champion)" if registered["champion"] else ""
        lines.append(
            f"  registered {registered['name']} version {registered['version']}{champion} in {registered['registry']}"
        )
        lines.append(f"            {registered['reason']}")
        infra = registered.get("infra_validation")
        if infra:
            verdict = "passed" if infra["passed"] else "FAILED"
            lines.append(f"  served    infra validation {verdict}: {infra['reason']} ({infra['seconds']:.1f} s)")
        if registered.get("promote_command"):
            lines.append(f"  promote   {registered['promote_command']}")
    else:
        lines.append("  registered nothing (the gate did not pass)")
    lines += _litert_lines(summary.get("litert"))
    lines += [
        f"  replicas  {summary['replicas']} in sync during fine-tuning",
        f"  model     {summary['model']}",
        f"  report    {summary['report']}",
        "  steps     " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["steps"].items() if v is not None),
        f"  logs      {summary['logs']} (each step's full output)",
        f"  curves    {summary['tensorboard']}",
        *([f"  tracked   MLflow run {summary['tracking']['run_id']} in experiment {summary['tracking']['experiment']}:"
             f" mlflow ui --backend-store-uri {summary['tracking']['uri']}"] if summary.get("tracking") else []),
    ]
    for note in summary.get("notes", []):
        lines.append(f"  note      {note}")
    skipped = summary["data"]["skipped"]
    if skipped:
        lines.append(f"  skipped   {len(skipped)} file(s), each listed with its reason in data.skipped")
    lines.append("=" * 72)
    return "\n".join(lines)


def _litert_lines(litert: dict | None) -> list[str]:
    if not litert:
        return []
    keras = litert["keras"]
    lines = [f"  litert    {litert['directory']} (Keras: test accuracy {keras['accuracy']:.4f}, "
             f"{keras['latency_ms']:.2f} ms/image)"]
    for variant, reason in litert["gate"]["reasons"].items():
        m = litert["variants"].get(variant)
        measured = (f"{m['size_bytes'] / 1e6:.2f} MB, {m['accuracy_change']:+.4f}, {m['changed_predictions']} changed, "
                    f"{m['latency_ms']:.2f} ms; ") if m else ""
        lines.append(f"            {variant}: {measured}{reason}")
    return lines


def _check_lines(checks: dict | None) -> list[str]:
    if not checks:
        return []
    champion = f"champion version {checks['champion']}" if checks.get("champion") else "no champion yet"
    drift = f" (image drift AUC {checks['image_drift_auc']:.3f})" if checks.get("image_drift_auc") is not None else ""
    lines = [f"  checks    data against {checks['model']}'s {champion}: {'passed' if checks['passed'] else 'STOPPED'}"
             f"{drift}"]
    return lines + [f"            - {finding}" for finding in checks["findings"]]
