"""`tlp run --tune` through the real kfp local runner: every trial, the best by validation goes on."""

import json
import subprocess
import sys

import pytest

TLP = [sys.executable, "-m", "tlp.pipelines.cli"]
SMALL = ["--weights", "none", "--alpha", "0.35", "--image-size", "64", "--batch-size", "16"]


@pytest.mark.slow
def test_tuned_run_trains_every_trial_and_registers_the_best(tmp_path):
    summary_path = tmp_path / "summary.json"
    result = subprocess.run([
        *TLP, "run", "--data", "sample:20", *SMALL, "--epochs", "2", "--fine-tune-epochs", "1",
        "--max-gap", "1", "--min-accuracy", "0", "--tune", "fine_tune_at=60,100 dropout=0.2,0.4",
        "--output-dir", str(tmp_path), "--summary-json", str(summary_path),
    ], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    trials = summary["tuning"]["trials"]
    assert sorted((t["params"]["fine_tune_at"], t["params"]["dropout"]) for t in trials) == [
        (60, 0.2), (60, 0.4), (100, 0.2), (100, 0.4)]
    assert all(t["seconds"] > 0 and 0 <= t["val_accuracy"] <= 1 and t["val_loss"] >= 0 for t in trials)
    best = summary["tuning"]["best"]
    expected = min(trials, key=lambda t: (-t["val_accuracy"], t["val_loss"]))
    assert best["val_accuracy"] == expected["val_accuracy"] and best["val_loss"] == expected["val_loss"]
    run_dir = summary["run_dir"]
    heads = json.loads(open(f"{run_dir}/feature-extraction-heads/executor_output.json").read())
    assert heads["parameterValues"]["heads"] == 2  # one head per dropout, one feature extraction
    assert "tuning    4 trials" in result.stdout
    # Validation chose the best trial, so the gate's gap is train - test, and the summary says so.
    metrics, gap = summary["metrics"], summary["gate"]["gap"]
    assert gap["split"] == "test" and summary["metrics"]["gap_split"] == "test"
    assert metrics["gap"] == pytest.approx(metrics["train_accuracy"] - metrics["test_accuracy"])
    assert gap["train_photos"] == gap["train_split_photos"] == sum(summary["data"]["counts"]["train"].values())
    assert "= train - test accuracy (validation chose this tuned run's trial)" in result.stdout
    # Lineage: the registered version records the best trial's parameters.
    from tlp.components.lib.model import read_info

    info = read_info(summary["model"])
    assert info["options"]["fine_tune_at"] == best["params"]["fine_tune_at"]
    assert info["options"]["dropout"] == best["params"]["dropout"]
    assert summary["registered"]["version"] == "1"
