"""Benchmark workloads that skip fine-tuning's SavedModel export (benchmarks 2, 3, 5, 7, 10) must
still run to their result: the drift reference, written after the export into the model's
directory, failed with FileNotFoundError .../tuned/drift_reference.npz when that directory was
never made. Each workload runs as the suite runs it: ``python -m bench.workloads NAME ARGS RESULT``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _workload(name: str, args: dict, tmp_path: Path) -> dict:
    result = tmp_path / f"{name}.result.json"
    done = subprocess.run([sys.executable, "-m", "bench.workloads", name, json.dumps(args), str(result)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    payload = json.loads(result.read_text()) if result.exists() else {"ok": False, "error": done.stderr[-2000:]}
    assert payload.get("ok"), f"{name}: {payload.get('error')}"
    return payload["result"]


@pytest.mark.slow
def test_fine_tuning_with_its_export_skipped_runs_to_its_result(tmp_path):
    dataset, runs = str(tmp_path / "dataset"), tmp_path / "runs"
    _workload("prep", {"data": "sample:12", "output_dir": dataset, "image_size": 64, "seed": 42, "processes": 0},
              tmp_path)
    result = _workload("head_then_tune", {
        "dataset_dir": dataset, "run_dir": str(runs), "alpha": 0.35, "weights": "none", "head_epochs": 1,
        "tune_epochs": 1, "batch_size": 8, "seed": 42, "fine_tune_at": 100, "learning_rate": 1e-4}, tmp_path)
    assert len(result["tune_epochs"]) == 1 and result["exported"] is False
    assert not (runs / "tuned").exists()  # nothing after the last epoch was written
