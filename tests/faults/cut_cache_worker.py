"""Runs the fine-tuning function in its own process, with or without the cut cache, optionally
counting the TFRecord records it reads (for the distribution tests of the cut cache and of
file sharding).

usage: python -m tests.faults.cut_cache_worker OPTIONS_JSON
OPTIONS_JSON: {"dataset", "model_in", "model_out", "backup" (or ""), "epochs", "batch", "devices",
               "cut_cache" (bool), "count_records" (bool), "budget_bytes" (optional),
               "export" (default false: save only the Keras model, not the SavedModel, to save time)}
Prints "HISTORY <json>", "REPLICAS <n>" and, when counting, "RECORDS <json list>": a short digest
of every record this process read, in reading order.
"""

import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def count_records(seen: list) -> None:
    """Every TFRecordDataset made from now on notes each record it yields. The note is a map on
    the reader's output, so tf.distribute's file sharding, which rewrites the reader's file list,
    still applies and only this worker's records are noted."""
    import tensorflow as tf

    reader = tf.data.TFRecordDataset

    def note(record):
        seen.append(hashlib.sha1(record).hexdigest()[:16])
        return record

    def counting(*args, **kwargs):
        return reader(*args, **kwargs).map(lambda r: tf.ensure_shape(tf.numpy_function(note, [r], tf.string), []))

    tf.data.TFRecordDataset = counting


def main(argv):
    options = json.loads(argv[0])
    from tlp.components.lib import cut_cache
    from tlp.components.lib.training import fine_tune

    if options.get("budget_bytes") is not None:
        cut_cache.DEFAULT_BUDGET_BYTES = options["budget_bytes"]
    if not options.get("export"):
        from tlp.components.lib import model as model_lib

        def save_only_keras(model, export_dir, class_names, image_size, info):
            model_lib.save_keras(model, export_dir, info)

        model_lib.export_servable = save_only_keras
        # The drift reference belongs with the servable export (a second pass over training photos):
        # without the export the counts below are of what training reads.
        from tlp.components.lib import training

        training.write_drift_reference = lambda *args, **kwargs: 0
    seen: list = []
    if options.get("count_records"):
        count_records(seen)
    from tlp.components.lib.settings import Settings

    settings = Settings.from_values({
        "fine_tune_at": 100, "fine_tune_epochs": options["epochs"], "batch_size": options["batch"],
        "devices": options["devices"], "seed": 11, "no_cut_cache": not options["cut_cache"],
    })
    history, replicas = fine_tune(
        options["dataset"], options["model_in"], options["model_out"], settings,
        backup_dir=options.get("backup") or None,
    )
    print("HISTORY", json.dumps(history), flush=True)
    print("REPLICAS", replicas, flush=True)
    if options.get("count_records"):
        print("RECORDS", json.dumps(seen), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
