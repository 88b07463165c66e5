"""The drift reference fine-tuning writes (issue 29.5): its cost and memory must not grow with the
training split, so it decodes only its sampled photos and reads no record past its window."""

import json
import os

import numpy as np

from tlp.components.lib import drift, training
from tlp.components.lib import model as model_lib
from tlp.components.lib.dataprep import records

SEED = 3


def test_the_reference_decodes_only_its_sample_and_reads_no_record_past_its_window(
    sample_dataset, head_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(drift, "MAX_REFERENCE", 10)
    monkeypatch.setattr(drift, "REFERENCE_WINDOW", 30, raising=False)
    stored = list(records.read_stored_images(sample_dataset, "train"))
    assert len(stored) > 40  # a split larger than the window
    sampled = set(drift.sample_indices(30, 10, SEED).tolist())
    # A training split whose unsampled photos cannot be decoded and whose records past the window
    # cannot even be read: the reference must touch neither.
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    with open(dataset / "train-00000.tfrecord", "wb") as shard:
        for position, (image, source_id) in enumerate(stored[:30]):
            image = image if position in sampled else b"not a JPEG"
            shard.write(records.tfrecord_frame(records.serialize_example(image, position % 2, source_id)))
        shard.write(b"\xff" * 4096)  # a corrupt record: reading it raises DataLossError
    with open(os.path.join(sample_dataset, records.METADATA_FILE)) as handle:
        metadata = json.load(handle)
    metadata["files"]["train"] = ["train-00000.tfrecord"]
    metadata["num_examples"]["train"] = len(stored)
    (dataset / records.METADATA_FILE).write_text(json.dumps(metadata))

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    count = training.write_drift_reference(model_lib.load_keras(head_model[0]), str(dataset), str(model_dir), 4, SEED)

    reference = drift.load_reference(str(model_dir))
    chosen = sorted(sampled)
    assert count == 10
    assert reference.ids == [stored[i][1] for i in chosen]
    assert reference.photos == [drift.content_id(stored[i][0]) for i in chosen]
    assert reference.features.shape == (10, 1280) and np.abs(reference.features).max() > 0


def test_a_split_within_the_window_keeps_the_sample_it_had():
    """Up to REFERENCE_WINDOW photos, the reference is the same seeded sample of the whole split."""
    for count in (5, drift.MAX_REFERENCE, drift.REFERENCE_WINDOW):
        expected = drift.sample_indices(count, drift.MAX_REFERENCE, 42)
        assert np.array_equal(drift.reference_positions(count, 42), expected)
    beyond = drift.reference_positions(10 * drift.REFERENCE_WINDOW, 42)
    assert len(beyond) == drift.MAX_REFERENCE and beyond[-1] < drift.REFERENCE_WINDOW
