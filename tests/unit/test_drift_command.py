"""`tlp drift` through its real entry point, on a small fine-tuned model (random weights, 64 px):
photos like the training photos pass, the same photos through a much worse camera exit 4."""

import json

import numpy as np
import pytest

from tests.support import new_and_worse_photos
from tlp.components.lib import drift
from tlp.pipelines.cli import main


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    new_and_worse_photos(str(root))
    return root


def test_the_fine_tuned_model_carries_its_reference(tuned_model):
    reference = drift.load_reference(tuned_model[0])
    assert 10 <= len(reference.ids) <= drift.MAX_REFERENCE
    assert reference.features.shape == (len(reference.ids), 1280)
    assert np.abs(reference.features).max() > 0  # not underflowed to zeros


def test_photos_like_the_training_photos_pass(tuned_model, photo_folders, capsys):
    assert main(["drift", tuned_model[0], str(photo_folders / "same"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["auc"] <= 0.65 and result["drifted"] is False and result["n"] == 80


def test_photos_from_a_much_worse_camera_exit_4(tuned_model, photo_folders, capsys):
    assert main(["drift", tuned_model[0], str(photo_folders / "worse")]) == 4
    out = capsys.readouterr().out
    auc = float(out.split("AUC ")[1].split()[0])
    assert auc >= 0.8
    assert "drifted" in out and "least like the training photos" in out


def test_a_missing_folder_is_a_config_error(tuned_model, tmp_path, capsys):
    assert main(["drift", tuned_model[0], str(tmp_path / "nowhere")]) == 2
    assert "neither an image file nor a folder" in capsys.readouterr().err


def test_a_photo_is_scored_as_data_prep_stores_the_training_photos(tuned_model, photo_folders, tmp_path):
    """The reference holds features of photos as data prep stored them (JPEG at the model's size);
    tlp drift must see a new photo the same way, or the storing itself reads as drift."""
    import shutil

    import tensorflow as tf

    from tlp.components.lib import model as model_lib
    from tlp.components.lib.dataprep.prepare import prepare_dataset
    from tlp.components.lib.dataprep.records import read_metadata
    from tlp.pipelines.drift import features_of

    photos = tmp_path / "photos"
    for path in sorted((photo_folders / "same").glob("*.png")):
        (photos / f"class{path.name[0]}").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, photos / f"class{path.name[0]}" / path.name)
    prepared = str(tmp_path / "prepared")
    prepare_dataset(f"folder:{photos}", prepared, image_size=64, seed=7)
    metadata = read_metadata(prepared)
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "source_id": tf.io.FixedLenFeature([], tf.string)}
    stored = {}
    for split in ("train", "val", "test"):
        for record in tf.data.TFRecordDataset([f"{prepared}/{name}" for name in metadata["files"][split]]):
            parsed = tf.io.parse_single_example(record, spec)
            stored[parsed["source_id"].numpy().decode()] = parsed["image"].numpy()
    paths = sorted(stored)
    assert len(paths) == 80
    signature = model_lib.load_servable(tuned_model[0], model_lib.FEATURES_SIGNATURE)
    from_data_prep = signature(image_bytes=tf.constant([stored[p] for p in paths]))["pooled_features"].numpy()
    features, scored, unreadable, _ = features_of(tuned_model[0], paths)
    assert scored == paths and not unreadable
    # Random weights make features tiny (about 1e-12 at alpha 1.0): compare relative to their scale.
    # Scored raw, these lossless photos differ from their stored form by about 3% of it.
    assert np.abs(features - from_data_prep).max() <= 1e-4 * np.abs(from_data_prep).max()


def test_an_unreadable_file_is_listed_and_the_other_photos_are_scored(tuned_model, photo_folders, tmp_path, capsys):
    import shutil

    shutil.copytree(photo_folders / "same", tmp_path / "mixed")
    (tmp_path / "mixed" / "broken.jpg").write_bytes(b"not a photo")
    assert main(["drift", tuned_model[0], str(tmp_path / "mixed"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 80 and result["unreadable"] == [f"{tmp_path}/mixed/broken.jpg"]


def test_a_link_to_a_missing_file_is_listed_as_unreadable_as_in_data_prep(tuned_model, photo_folders, tmp_path, capsys):
    import os
    import shutil

    shutil.copytree(photo_folders / "same", tmp_path / "linked")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "linked" / "dangling.jpg")
    assert main(["drift", tuned_model[0], str(tmp_path / "linked"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 80 and result["unreadable"] == [f"{tmp_path}/linked/dangling.jpg"]


def test_each_photo_twice_in_the_folder_reads_as_once(tuned_model, photo_folders, tmp_path, capsys):
    """A copy of a photo (another name, or saved again with other bytes but the same picture) is the
    same photo: counted twice, its copies sit in the fitting and the held-out folds and read as drift."""
    import shutil

    from PIL import Image

    assert main(["drift", tuned_model[0], str(photo_folders / "same"), "--json"]) == 0
    once = json.loads(capsys.readouterr().out)
    twice = tmp_path / "twice"
    shutil.copytree(photo_folders / "same", twice)
    for path in sorted((photo_folders / "same").glob("*.png")):  # the same picture, other bytes
        Image.open(path).save(twice / f"copy-{path.name}", compress_level=1)
    assert main(["drift", tuned_model[0], str(twice), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == once["n"] == 80 and result["auc"] == once["auc"] and result["auc"] <= 0.65, result
