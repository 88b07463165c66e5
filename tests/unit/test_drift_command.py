"""`tlp drift` through its real entry point, on a small fine-tuned model (random weights, 64 px):
photos like the training photos pass, the same photos through a much worse camera exit 4."""

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from tlp.components.lib import drift
from tlp.pipelines.cli import main


def _worse_camera(pixels, rng):
    """Strong blur, washed-out colour and contrast, heavy sensor noise."""
    image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(4))
    image = ImageEnhance.Contrast(ImageEnhance.Color(image).enhance(0.3)).enhance(0.5)
    noisy = np.asarray(image).astype(np.float32) * 0.6 + 100 + rng.normal(0, 40, pixels.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
    from tlp.components.lib.dataprep.sources import sample_pixels as _sample_pixels

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for kind in ("same", "worse"):
        os.makedirs(root / kind)
    for label in range(2):
        for index in range(40):  # other seeds than the training photos: new photos of the same kind
            pixels = _sample_pixels(label, (99, label, index))
            Image.fromarray(pixels).save(root / "same" / f"{label}-{index}.png")
            Image.fromarray(_worse_camera(pixels, rng)).save(root / "worse" / f"{label}-{index}.png")
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
