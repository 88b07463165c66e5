"""Data sources, the split, decoding and the prepared TFRecord data set."""

import json
import os

import numpy as np
import pytest

from tests.conftest import write_image
from tlp.components.lib.dataprep import encode, prepare, records, sources, split
from tlp.components.lib.specs import ConfigError


def test_sample_is_deterministic_and_balanced():
    first, second = sources.list_sample(20, seed=1), sources.list_sample(20, seed=1)
    assert first.class_names == ["circles", "squares"] and first.photos == 40
    assert first.units == second.units  # recipes, not pixels: nothing held in memory
    source_id, label, number = first.units[0][2][0]
    pixels = sources.sample_pixels(label, (1, label, number))
    assert np.array_equal(pixels, sources.sample_pixels(label, (1, label, number)))
    encoded = encode.read_unit(first.units[0], 0, 32)
    assert [photo.source_id for photo in encoded] == [item[0] for item in first.units[0][2]]
    assert all(photo.encoded and photo.error is None for photo in encoded)


def test_examples_serialize_to_tensorflows_bytes_without_tensorflow():
    import tensorflow as tf

    for encoded, label, source_id in ((b"\xff\xd8jpeg" * 300, 1, "cat/\u00e9t\u00e9 1.jpg"), (b"", 0, ""),
                                      (b"x", 300, "a" * 200)):
        feature = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            "source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[source_id.encode()])),
        }
        expected = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)
        assert records.serialize_example(encoded, label, source_id) == expected


def test_tfrecord_frames_are_read_by_tensorflow(tmp_path):
    import tensorflow as tf

    path = str(tmp_path / "one.tfrecord")
    records.write_shard(path, [(b"abc", 1, "x"), (b"defg" * 1000, 0, "y")])
    read = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    assert [e.features.feature["source_id"].bytes_list.value[0] for e in read] == [b"x", b"y"]
    assert read[1].features.feature["image"].bytes_list.value[0] == b"defg" * 1000


def test_data_prep_resize_matches_the_serving_signatures_within_rounding():
    """Data prep resizes with Pillow (no TensorFlow in Beam's workers), serving with TensorFlow:
    the same antialiased bilinear filter, so the model sees the same pixels up to rounding."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    smooth = tf.image.resize(rng.integers(0, 255, (12, 16, 3)).astype(np.float32), [480, 640]).numpy()
    pixels = np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8)
    ours = encode.decode_bytes(encode.encode_pixels(pixels, 160), 160).astype(np.float32)
    theirs = tf.round(tf.clip_by_value(encode.resize(pixels, 160), 0, 255)).numpy()
    assert ours.shape == theirs.shape == (160, 160, 3)
    assert np.abs(ours - theirs).mean() < 2.0  # JPEG quality 95 and rounding; the filter is the same


def test_split_is_stratified_and_disjoint():
    """Every class in every split, each photo once, deterministic for a seed (tests/unit/test_split.py
    covers the fractions and the stability)."""
    examples = [split.Example(f"c{label}/{i}", label) for label in range(3) for i in range(50)]
    splits, record = split.split_by_content(examples, seed=3)
    for name in records.SPLITS:
        counts = np.bincount([e.label for e in splits[name]], minlength=3)
        assert (counts > 0).all()
    ids = [e.source_id for s in records.SPLITS for e in splits[s]]
    assert len(ids) == len(set(ids)) == 150
    again, _ = split.split_by_content(examples, seed=3)
    other, _ = split.split_by_content(examples, seed=4)
    assert [e.source_id for e in again["test"]] == [e.source_id for e in splits["test"]]
    assert [e.source_id for e in other["test"]] != [e.source_id for e in splits["test"]]
    assert record["method"] == "content-sha256" and record["seed"] == 3


def test_prepared_dataset_round_trip(sample_dataset):
    metadata = records.read_metadata(sample_dataset)
    assert metadata["class_names"] == ["circles", "squares"]
    assert sum(sum(counts.values()) for counts in metadata["counts"].values()) == 80
    assert metadata["image_size"] == 64 and metadata["source"] == "sample:40"
    batch_images, batch_labels = next(iter(records.read_split(sample_dataset, "val", 2)))
    assert batch_images.shape == (2, 64, 64, 3) and batch_images.dtype.name == "uint8"
    total = sum(int(labels.shape[0]) for _, labels in records.read_split(sample_dataset, "train", 10))
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
    metadata = prepare.prepare_dataset(f"folder:{root}", str(tmp_path / "out"), image_size=32, seed=1)
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
        prepare.prepare_dataset(f"folder:{root}", str(tmp_path / "out"))


def test_folder_without_images_is_refused(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(ConfigError, match="0 class folder"):
        prepare.prepare_dataset(f"folder:{tmp_path / 'empty'}", str(tmp_path / "out"))


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        prepare.prepare_dataset(f"folder:{tmp_path / 'nope'}", str(tmp_path / "out"))


def test_tfds_source_with_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    requested = []
    real_load = tfds.load

    def recording_load(name, split, **kwargs):
        requested.append(split)
        return real_load(name, split=split, **kwargs)

    monkeypatch.setattr(tfds, "load", recording_load)
    with tfds.testing.mock_data(num_examples=30):
        # processes=0: tfds's mock lives in this process only (real runs read on every core).
        metadata = prepare.prepare_dataset("tfds:cats_vs_dogs", str(tmp_path / "out"), image_size=48, processes=0)
    # The tutorial's slices, each read as even sub-splits.
    assert requested == [part for whole in ("train[:80%]", "train[80%:90%]", "train[90%:]")
                         for part in tfds.even_splits(whole, n=sources.TFDS_UNITS_PER_SPLIT)]
    assert metadata["split"]["method"].startswith("tfds-slices:cats_vs_dogs/")
    assert metadata["class_names"] == ["cat", "dog"]
    # mock_data serves num_examples for each requested (sub-)split, whatever its size.
    per_split = 30 * sources.TFDS_UNITS_PER_SPLIT
    assert metadata["num_examples"] == {"train": per_split, "val": per_split, "test": per_split}
    batch, _ = next(iter(records.read_split(str(tmp_path / "out"), "train", 4)))
    assert batch.shape == (4, 48, 48, 3)


def test_unknown_tfds_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="tfds:no_such_dataset_xyz could not be loaded"):
        prepare.prepare_dataset("tfds:no_such_dataset_xyz", str(tmp_path / "out"))


def test_decode_converts_modes(tmp_path):
    gray = write_image(str(tmp_path / "g.png"), mode="L", fmt="PNG")
    rgba = write_image(str(tmp_path / "a.png"), mode="RGBA", fmt="PNG")
    gif = write_image(str(tmp_path / "p.gif"), mode="P", fmt="GIF")
    for path in (gray, rgba, gif):
        pixels = encode.decode_file(path, 64)
        assert pixels.shape == (30, 40, 3) and pixels.dtype == np.uint8
