"""Retraining week to week, through the real kfp local runner: the data checks stop a run whose
data shrank (30% fewer photos, or a class gone) before training, with one sentence naming the
numbers and the option; the option lets it go on; a run with a class more is registered but not
promoted, and the summary gives the exact command that promotes it."""

import html
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

TLP = [sys.executable, "-m", "tlp.pipelines.cli"]
QUICK = ["--weights", "none", "--alpha", "0.35", "--image-size", "32", "--batch-size", "16", "--epochs", "2",
         "--fine-tune-epochs", "0", "--max-gap", "1", "--min-accuracy", "0"]
COLOURS = {"apple": (200, 40, 40), "leaf": (40, 170, 60), "sky": (60, 90, 210), "sun": (230, 200, 40)}


def _photos(root, per_class, classes=("apple", "leaf", "sky")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(COLOURS[name], 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def _tlp(folder, out, *extra):
    summary = out / f"summary-{len(os.listdir(out)) if out.exists() else 0}.json"
    result = subprocess.run([*TLP, "run", "--data", f"folder:{folder}", *QUICK, "--output-dir", str(out),
                             "--model-name", "colours", "--summary-json", str(summary), *extra],
                            capture_output=True, text=True)
    return result, (json.loads(summary.read_text()) if result.returncode == 0 else None)


@pytest.mark.slow
def test_checks_stop_a_shrunk_data_set_and_a_new_class_waits_for_a_person(tmp_path):
    out = tmp_path / "out"
    first, summary = _tlp(_photos(tmp_path / "week1", 20), out)
    assert first.returncode == 0, first.stderr[-3000:]
    assert summary["registered"]["version"] == "1" and summary["registered"]["champion"]

    # A class gone (its folder not synced): 40 photos vs 60.
    gone = tmp_path / "week2"
    shutil.copytree(tmp_path / "week1", gone)
    shutil.rmtree(gone / "sky")
    stopped, _ = _tlp(gone, out)
    assert stopped.returncode == 1
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("tlp: error: step data-checks failed: the data checks stopped the run before training: "
                           "40 photos vs 60 for champion version 1 of 'colours' (33% fewer, more than "
                           "--max-data-drop 0.1; gone: class(es) 'sky')"), last
    assert "pass --max-data-drop 0.34 to train on it anyway" in last
    runs = sorted(os.listdir(out / "pipeline-root"))
    assert not os.path.exists(out / "pipeline-root" / runs[-1] / "feature-extraction")  # stopped before training

    # 30% fewer photos: 14 of 20 per class.
    fewer = _photos(tmp_path / "week3", 14)
    stopped, _ = _tlp(fewer, out)
    assert stopped.returncode == 1
    last = stopped.stderr.strip().splitlines()[-1]
    assert "42 photos vs 60 for champion version 1 of 'colours' (30% fewer, more than --max-data-drop 0.1)" in last
    assert "--max-data-drop 0.3 to train on it anyway" in last
    went_on, summary = _tlp(fewer, out, "--max-data-drop", "1")
    assert went_on.returncode == 0, went_on.stderr[-3000:]
    assert summary["checks"]["passed"] and summary["checks"]["drop"] == 0.3
    assert summary["registered"]["version"] == "2" and "vs champion version 1" in summary["registered"]["reason"]
    report = open(summary["report"], encoding="utf-8").read()
    assert "Data checks (against the champion" in report and "42 photos vs 60 for champion version 1" in report
    # The new photos' image drift against champion 1's reference, measured without --max-image-drift:
    # in the summary's checks line, the report and the MLflow run.
    auc = summary["checks"]["image_drift_auc"]
    assert 0.0 <= auc <= 1.0
    assert f"passed (image drift AUC {auc:.3f})" in went_on.stdout
    assert f"image drift of the new training photos vs the champion's: AUC {auc:.3f}" in html.unescape(report)
    from mlflow.tracking import MlflowClient

    tracked = MlflowClient(summary["tracking"]["uri"]).get_run(summary["tracking"]["run_id"])
    assert tracked.data.metrics["image_drift_auc"] == pytest.approx(auc)

    # A class more: registered, not promoted; the summary says why and how to promote it.
    more = _photos(tmp_path / "week4", 20, classes=("apple", "leaf", "sky", "sun"))
    added, summary = _tlp(more, out)
    assert added.returncode == 0, added.stderr[-3000:]
    registered = summary["registered"]
    assert registered["version"] == "3" and not registered["champion"]
    assert "the classes changed since champion version" in registered["reason"] and "added 'sun'" in \
        registered["reason"]
    assert any("added 'sun'" in f for f in summary["checks"]["findings"])
    command = registered["promote_command"]
    assert command == f"tlp models promote colours/3 --reason 'WHY' --registry sqlite:///{out}/registry.db"
    assert f"promote   {command}" in added.stdout
    promoted = subprocess.run([*TLP, *command.split()[1:4], "--reason", "sun photos are in scope",
                               "--registry", f"sqlite:///{out}/registry.db"], capture_output=True, text=True)
    assert promoted.returncode == 0 and "colours version 3 is now the champion" in promoted.stdout, promoted.stderr
