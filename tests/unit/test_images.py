"""Data sources, the split, decoding and the prepared TFRecord data set."""

import json
import os

import numpy as np
import pytest

from tests.conftest import write_image
from tlp.components.lib import images
from tlp.components.lib.specs import ConfigError


def test_sample_is_deterministic_and_balanced():
    first = images.sample_examples(20, seed=1)
    second = images.sample_examples(20, seed=1)
    assert first.class_names == ["circles", "squares"]
    ids = [e.source_id for e in first.splits["train"]]
    assert ids == [e.source_id for e in second.splits["train"]]
    assert np.array_equal(first.splits["train"][0].generate(), second.splits["train"][0].generate())
    assert first.splits["train"][0].pixels is None  # drawn when written, not held in memory
    assert sum(len(first.splits[s]) for s in images.SPLITS) == 40 and all(first.splits[s] for s in images.SPLITS)


def test_split_is_stratified_and_disjoint():
    """Every class in every split, each photo once, deterministic for a seed (tests/unit/test_split.py
    covers the fractions and the stability)."""
    examples = [images.Example(f"c{label}/{i}", label) for label in range(3) for i in range(50)]
    splits, record = images.split_by_content(examples, seed=3)
    for split in images.SPLITS:
        counts = np.bincount([e.label for e in splits[split]], minlength=3)
        assert (counts > 0).all()
    ids = [e.source_id for s in images.SPLITS for e in splits[s]]
    assert len(ids) == len(set(ids)) == 150
    again, _ = images.split_by_content(examples, seed=3)
    other, _ = images.split_by_content(examples, seed=4)
    assert [e.source_id for e in again["test"]] == [e.source_id for e in splits["test"]]
    assert [e.source_id for e in other["test"]] != [e.source_id for e in splits["test"]]
    assert record["method"] == "content-sha256" and record["seed"] == 3


def test_prepared_dataset_round_trip(sample_dataset):
    metadata = images.read_metadata(sample_dataset)
    assert metadata["class_names"] == ["circles", "squares"]
    assert sum(sum(counts.values()) for counts in metadata["counts"].values()) == 80
    assert metadata["image_size"] == 64 and metadata["source"] == "sample:40"
    batch_images, batch_labels = next(iter(images.read_split(sample_dataset, "val", 2)))
    assert batch_images.shape == (2, 64, 64, 3) and batch_images.dtype.name == "uint8"
    total = sum(int(labels.shape[0]) for _, labels in images.read_split(sample_dataset, "train", 10))
    assert total == metadata["num_examples"]["train"]


def _folder(tmp_path, per_class=10, classes=("cat", "dog")):
    for index, name in enumerate(classes):
        for i in range(per_class):
            write_image(str(tmp_path / "photos" / name / f"{i}.jpg"), color=(index * 200, 80, i * 10))
    return str(tmp_path / "photos")


def test_folder_source_with_odd_files(tmp_path):
    root = _folder(tmp_path)
    write_image(str(tmp_path / "photos" / "cat" / "nested" / "deep.png"), mode="L", fmt="PNG")
    write_image(str(tmp_path / "photos" / "dog" / "alpha.png"), mode="RGBA", fmt="PNG")
    (tmp_path / "photos" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "photos" / "dog" / "empty.jpg").write_bytes(b"")
    (tmp_path / "photos" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    metadata = images.prepare_dataset(f"folder:{root}", str(tmp_path / "out"), image_size=32, seed=1)
    assert metadata["class_names"] == ["cat", "dog"]
    assert sum(metadata["num_examples"].values()) == 22
    reasons = {os.path.basename(s["path"]): s["reason"] for s in metadata["skipped"]}
    assert set(reasons) == {"notes.txt", "empty.jpg", "broken.jpg"}
    assert "0 bytes" in reasons["empty.jpg"]
    saved = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert len(saved["skipped"]) == 3


def test_folder_with_one_class_is_refused(tmp_path):
    root = _folder(tmp_path, classes=("cat",))
    with pytest.raises(ConfigError, match="1 class folder"):
        images.prepare_dataset(f"folder:{root}", str(tmp_path / "out"))


def test_folder_without_images_is_refused(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(ConfigError, match="0 class folder"):
        images.prepare_dataset(f"folder:{tmp_path / 'empty'}", str(tmp_path / "out"))


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        images.prepare_dataset(f"folder:{tmp_path / 'nope'}", str(tmp_path / "out"))


def test_tfds_source_with_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    requested = []
    real_load = tfds.load

    def recording_load(name, split, **kwargs):
        requested.append(split)
        return real_load(name, split=split, **kwargs)

    monkeypatch.setattr(tfds, "load", recording_load)
    with tfds.testing.mock_data(num_examples=30):
        metadata = images.prepare_dataset("tfds:cats_vs_dogs", str(tmp_path / "out"), image_size=48)
    assert requested == [["train[:80%]", "train[80%:90%]", "train[90%:]"]]  # the tutorial's split
    assert metadata["split"]["method"].startswith("tfds-slices:cats_vs_dogs/")
    assert metadata["class_names"] == ["cat", "dog"]
    # mock_data serves num_examples for each requested split, whatever its size.
    assert metadata["num_examples"] == {"train": 30, "val": 30, "test": 30}
    batch, _ = next(iter(images.read_split(str(tmp_path / "out"), "train", 4)))
    assert batch.shape == (4, 48, 48, 3)


def test_unknown_tfds_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="tfds:no_such_dataset_xyz could not be loaded"):
        images.prepare_dataset("tfds:no_such_dataset_xyz", str(tmp_path / "out"))


def test_decode_converts_modes(tmp_path):
    gray = write_image(str(tmp_path / "g.png"), mode="L", fmt="PNG")
    rgba = write_image(str(tmp_path / "a.png"), mode="RGBA", fmt="PNG")
    gif = write_image(str(tmp_path / "p.gif"), mode="P", fmt="GIF")
    for path in (gray, rgba, gif):
        pixels = images.decode_file(path, 64)
        assert pixels.shape == (30, 40, 3) and pixels.dtype == np.uint8
