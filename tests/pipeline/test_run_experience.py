"""One whole local run as a user starts it (`tlp run`, default epochs, --augment tutorial, test-size
images), then what the user gets from it: a short console, the step logs, TensorBoard logs of both
phases, and an MLflow run to compare in `mlflow ui`."""

import json
import os
import subprocess
import sys

import pytest

from tests.unit.test_augment_and_tensorboard import _epoch_scalars
from tlp.components.lib.steps import STEP_NAMES

TLP = [sys.executable, "-m", "tlp.pipelines.cli"]
SMALL = ["--weights", "none", "--alpha", "0.35", "--image-size", "64", "--batch-size", "16"]
MAX_CONSOLE_LINES = 80
STEPS = STEP_NAMES  # data-fingerprint, data-prep, data-checks, feature-extraction, ... registration


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary_path = out / "summary.json"
    result = subprocess.run(
        [*TLP, "run", "--data", "sample:30", *SMALL, "--augment", "tutorial", "--max-gap", "1", "--min-accuracy", "0",
         "--output-dir", str(out), "--summary-json", str(summary_path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, json.loads(summary_path.read_text()), result.stdout, result.stderr


@pytest.mark.slow
def test_default_console_is_short_and_the_step_logs_hold_the_rest(augmented_run):
    _out, summary, stdout, stderr = augmented_run
    console = (stdout + stderr).splitlines()
    assert len(console) <= MAX_CONSOLE_LINES, "\n".join(console)
    for number, step in enumerate(STEPS, 1):
        assert f"step {number}/{len(STEPS)} {step}" in console
        assert any(line.startswith(f"step {number}/{len(STEPS)} {step} done in ") for line in console)
    epochs = [line for line in console if line.startswith("  epoch ")]
    assert len(epochs) == 20 and epochs[0].startswith("  epoch 1/10: loss ") and epochs[-1].startswith("  epoch 20/20")
    noise = ("executor_input", "I0000", "absl::InitializeLog", "non-Python base image", "[KFP Executor")
    assert not [line for line in console if any(word in line for word in noise)]

    logs = summary["logs"]
    assert f"  logs      {logs} (each step's full output)" in console
    assert {f"{step}.log" for step in STEPS} <= set(os.listdir(logs))
    for step in STEPS:
        text = open(os.path.join(logs, f"{step}.log"), encoding="utf-8").read()
        assert "Got executor_input:" in text and f"Task '{step}' finished with status SUCCESS" in text
    assert "Epoch 20/20" in open(os.path.join(logs, "fine-tuning.log"), encoding="utf-8").read()


@pytest.mark.slow
def test_augment_tutorial_end_to_end(augmented_run):
    _out, summary, stdout, _stderr = augmented_run
    assert summary["augment"] == "flip,rotate:0.2"
    assert "  augment   flip,rotate:0.2 on the training images: feature extraction ran the frozen base every epoch" \
        in stdout
    assert "  augmentation: flip,rotate:0.2 on the training images" in stdout  # the step's own progress line
    assert summary["registered"]["version"] == "1"
    info = json.load(open(os.path.join(summary["model"], "model_info.json")))
    assert info["options"]["augment"] == "flip,rotate:0.2"


@pytest.mark.slow
def test_tensorboard_logs_of_both_phases_with_epochs_continuing(augmented_run):
    _out, summary, stdout, _stderr = augmented_run
    run_dir = summary["run_dir"]
    assert summary["tensorboard"] == f"tensorboard --logdir {run_dir}" and summary["tensorboard"] in stdout
    head = _epoch_scalars(os.path.join(run_dir, "feature-extraction", "tensorboard"))
    tune = _epoch_scalars(os.path.join(run_dir, "fine-tuning", "tensorboard"))
    for run in ("train", "validation"):
        assert sorted(head[(run, "epoch_accuracy")]) == list(range(10))
        assert sorted(tune[(run, "epoch_accuracy")]) == list(range(10, 20))


@pytest.mark.slow
def test_the_run_is_an_mlflow_run_linked_to_its_registered_version(augmented_run):
    from mlflow.tracking import MlflowClient

    out, summary, stdout, _stderr = augmented_run
    uri = f"sqlite:///{out}/registry.db"
    tracked = summary["tracking"]
    assert tracked["uri"] == uri and tracked["experiment"] == "transfer-learning" and tracked["linked_version"]
    assert f"mlflow ui --backend-store-uri {uri}" in stdout
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("transfer-learning").experiment_id])
    assert run.info.run_id == tracked["run_id"] and run.info.run_name == os.path.basename(summary["run_dir"])
    params = run.data.params
    assert params["augment"] == "flip,rotate:0.2" and params["epochs"] == "10" and params["data"] == "sample:30"
    losses = client.get_metric_history(run.info.run_id, "epoch_loss")
    assert sorted(m.step for m in losses) == list(range(1, 21))  # both phases, epochs continuing
    assert len(client.get_metric_history(run.info.run_id, "epoch_val_accuracy")) == 20
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["metrics"]["test_accuracy"])
    assert run.data.metrics["gate_passed"] == 1.0 and run.data.tags["gate"] == "passed"
    assert run.data.tags["gate.reasons"] == "\n".join(summary["gate"]["reasons"])
    assert run.data.tags["registered"] == "sample/1 (champion)"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "summary.json", "logs", "model"} <= artifacts
    logged_logs = {os.path.basename(a.path) for a in client.list_artifacts(run.info.run_id, "logs")}
    assert {f"{step}.log" for step in STEPS} <= logged_logs
    assert client.get_model_version("sample", "1").run_id == run.info.run_id
