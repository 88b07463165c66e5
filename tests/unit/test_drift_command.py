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
