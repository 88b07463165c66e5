"""One trial of a Vertex AI hyperparameter tuning job (``--tuner vizier``): the container entry
point the job's worker pool runs, ``python -m tlp.components.vizier_trial --dataset URI --heads URI
--options JSON --fine_tune_at=60 --learning_rate=3e-05`` (Vizier appends ``--NAME=VALUE`` for the
trial's parameters). It fine-tunes like a grid trial (first training its own head when the heads
step trained none for its setting: ``TuningPlan.heads_ahead``), writes the model and
``trial.json`` to ``AIP_MODEL_DIR`` and reports ``val_accuracy`` to Vizier the way
cloudml-hypertune does."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tlp.components.lib.tuning import TUNABLE
from tlp.components.lib.tuning_runs import run_trial

HYPERTUNE_FILE = "/tmp/hypertune/output.metrics"  # where Vertex AI's trial runner reads metrics from


def fuse_path(uri: str) -> str:
    """gs://BUCKET/PATH as the Cloud Storage FUSE mount Vertex AI jobs have (/gcs/BUCKET/PATH)."""
    return "/gcs/" + uri[len("gs://"):] if uri.startswith("gs://") else uri


def report_metric(value: float, path: str = HYPERTUNE_FILE) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps({"val_accuracy": value, "global_step": "1", "checkpoint_path": "",
                                 "trial": os.environ.get("CLOUD_ML_TRIAL_ID", "0")}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vizier_trial")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--heads", required=True)
    parser.add_argument("--options", required=True, help="the fine-tuning step's options (JSON)")
    parser.add_argument("--model-dir", default=os.environ.get("AIP_MODEL_DIR", ""))
    for name in TUNABLE:
        parser.add_argument(f"--{name}", dest=name)
    args = parser.parse_args(argv)
    trial = {name: getattr(args, name) for name in TUNABLE if getattr(args, name) is not None}
    model_dir = fuse_path(args.model_dir)
    record = run_trial(
        fuse_path(args.dataset), fuse_path(args.heads), model_dir, json.loads(args.options), trial,
        backup_dir=os.path.join(model_dir, "..", "backup"), tensorboard_dir=os.path.join(model_dir, "..", "logs"),
    )
    report_metric(record["val_accuracy"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
