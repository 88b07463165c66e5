"""Runs the fine-tuning function in its own process (for kill/restart and distribution tests).

usage: python -m tests.faults.fine_tune_worker DATASET MODEL_IN MODEL_OUT BACKUP EPOCHS BATCH DEVICES
Prints "HISTORY <json>" and "REPLICAS <n>" when done.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv):
    dataset, model_in, model_out, backup, epochs, batch, devices = argv
    from tlp.components.lib.settings import Settings
    from tlp.components.lib.training import fine_tune

    settings = Settings.from_values(
        {"fine_tune_at": 100, "fine_tune_epochs": epochs, "batch_size": batch, "devices": devices, "seed": 11}
    )
    history, replicas = fine_tune(dataset, model_in, model_out, settings, backup_dir=backup or None)
    print("HISTORY", json.dumps(history), flush=True)
    print("REPLICAS", replicas, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
