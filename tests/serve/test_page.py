"""The page at ``/`` in headless Chromium: a person picks photos and sees label and probability bars.

Photos are picked into the page's real file input; the test then reads what the page shows and
checks the screenshot's pixels: each bar's filled width must match its probability (the top
class in the accent colour, the others grey). A page that draws no bars, wrong widths or the
wrong colours fails."""

import os

import numpy as np
import pytest

from tests.serve.browser import chromium, headless_page
from tests.serve.conftest import MODEL_NAME

pytestmark = pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (apt-get install chromium)")

ACCENT, OTHER, TRACK = (0x1A, 0x73, 0xE8), (0x9A, 0xA0, 0xA6), (0xE8, 0xEA, 0xED)

READ_RESULTS = """
Array.from(document.querySelectorAll('.result')).reverse().map(card => ({
  file: card.querySelector('.file').textContent,
  label: card.dataset.label,
  rows: Array.from(card.querySelectorAll('.row')).map(row => {
    const track = row.querySelector('.track').getBoundingClientRect();
    return {name: row.dataset.class, probability: Number(row.dataset.probability),
            top: row.querySelector('.bar').classList.contains('top'),
            track: [track.left, track.top, track.width, track.height]};
  }),
}))
"""


def _close(pixel, colour, tolerance=24) -> bool:
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


def filled_fraction(pixels: np.ndarray, track: list[float], colour) -> float:
    """Share of the track's middle line painted in ``colour`` (the bar), from the screenshot."""
    left, top, width, height = (int(round(v)) for v in track)
    line = pixels[top + height // 2, left + 2: left + width - 2]  # skip the rounded corners' anti-aliasing
    bar = sum(1 for pixel in line if _close(pixel, colour))
    background = sum(1 for pixel in line if _close(pixel, TRACK))
    assert bar + background >= len(line) - 4, "the track holds colours other than the bar and its background"
    return (bar + 2) / width if bar else 0.0


def test_picked_photos_show_label_and_probability_bars(served, photos, tmp_path):
    from PIL import Image

    from tlp.pipelines.predict import predict_files

    url, model_dir, _ = served
    chosen = [photos[0], photos[1]]
    expected = predict_files(model_dir, chosen, registry_uri="unused")
    with headless_page(str(tmp_path / "profile")) as page:
        page.navigate(url + "/")
        assert page.evaluate("document.getElementById('model-name').textContent") == MODEL_NAME
        assert page.evaluate("document.getElementById('model-version').textContent").startswith("digest-")
        assert page.evaluate("document.getElementById('model-classes').textContent").split() == ["circles", "squares"]
        page.pick_files("#files", chosen)
        state = page.wait_for("document.body.dataset.state", timeout=120)
        assert state == "done", page.evaluate("document.getElementById('status').textContent")
        results = page.evaluate(READ_RESULTS)
        shot = page.screenshot(str(tmp_path / "page.png"))

    assert [r["file"] for r in results] == [os.path.basename(p) for p in chosen]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    for result, row in zip(results, expected, strict=True):
        assert result["label"] == row["label"]
        shown = [r["probability"] for r in result["rows"]]
        np.testing.assert_allclose(shown, row["probabilities"], atol=1e-5)
        for bar in result["rows"]:
            assert bar["top"] == (bar["name"] == row["label"])
            colour = ACCENT if bar["top"] else OTHER
            fraction = filled_fraction(pixels, bar["track"], colour)
            assert abs(fraction - bar["probability"]) <= 3 / bar["track"][2] + 0.01, (
                f"{result['file']} {bar['name']}: bar fills {fraction:.3f} of its track, probability is "
                f"{bar['probability']:.3f} (screenshot {shot})")


def test_a_file_that_is_not_an_image_shows_the_servers_error(served, tmp_path):
    url, _, _ = served
    fake = tmp_path / "notes.png"
    fake.write_text("not an image at all")
    with headless_page(str(tmp_path / "profile")) as page:
        page.navigate(url + "/")
        page.pick_files("#files", [str(fake)])
        assert page.wait_for("document.body.dataset.state", timeout=60) == "error"
        status = page.evaluate("document.getElementById('status').textContent")
        assert status.startswith("notes.png: instances[0]: cannot be decoded as an image")
        assert page.evaluate("document.querySelectorAll('.result').length") == 0
