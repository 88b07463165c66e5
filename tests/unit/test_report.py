"""The evaluation report: integer epoch ticks, a ROC picture for two classes, precision and recall
per class for more, and a Chromium screenshot of the rendered page."""

import io
import shutil
import subprocess

import numpy as np
import pytest

from tlp.components.lib import report

FEATURE = {"epoch": [1, 2, 3], "loss": [0.9, 0.6, 0.5], "accuracy": [0.6, 0.8, 0.85],
           "val_loss": [0.8, 0.7, 0.6], "val_accuracy": [0.7, 0.75, 0.8]}
TUNED = {"epoch": [4, 5], "loss": [0.4, 0.3], "accuracy": [0.9, 0.95], "val_loss": [0.5, 0.45],
         "val_accuracy": [0.85, 0.9]}


def _jpeg(colour):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _results(class_names):
    """Results shaped like evaluation.evaluate_model's, made up."""
    from tlp.components.lib import evaluation

    rng = np.random.default_rng(0)
    count = len(class_names)
    y_true = np.repeat(np.arange(count), 10)
    y_prob = rng.dirichlet(np.ones(count), size=len(y_true))
    y_prob[np.arange(len(y_true)), y_true] += 0.3  # mostly right, not perfectly
    y_prob /= y_prob.sum(axis=1, keepdims=True)
    y_pred = y_prob.argmax(axis=1)
    split = evaluation.split_metrics(y_true, y_prob, count)
    return {
        "class_names": class_names,
        **{name: split for name in ("train", "val", "test")},
        "test_details": {
            "confusion_matrix": evaluation.confusion(y_true, y_pred, count),
            "roc": evaluation.roc(y_true, y_prob) if count == 2 else None,
            "per_class": evaluation.per_class(y_true, y_pred, class_names),
            "misclassified": [{"source_id": f"img{i}.jpg", "true": class_names[0], "predicted": class_names[1],
                               "probability": 0.7, "jpeg": _jpeg((200, 40 * i, 40))} for i in range(3)],
        },
    }


def _render(class_names, path):
    context = report.report_context(_results(class_names), True, ["gap within max_gap"], 0.02, FEATURE, TUNED)
    report.write_report(str(path), context)
    return context, path.read_text(encoding="utf-8")


def test_learning_curves_have_whole_epoch_ticks():
    figure = report.learning_curves_figure(FEATURE, TUNED)
    figure.canvas.draw()
    labels = [label.get_text().replace("\u2212", "-") for label in figure.axes[1].get_xticklabels()]
    assert labels and all(text.lstrip("-").isdigit() for text in labels if text), labels


def test_two_classes_get_a_roc_picture_and_no_per_class_table(tmp_path):
    context, html = _render(["cats", "dogs"], tmp_path / "report.html")
    assert context["roc_png"] and "ROC curve (test)" in html and "Per class (test)" not in html


def test_more_classes_get_precision_and_recall_per_class(tmp_path):
    context, html = _render(["ants", "bees", "wasps"], tmp_path / "report.html")
    assert context["roc_png"] is None and "ROC curve" not in html
    assert "Per class (test)" in html
    for row in context["per_class"]:
        assert f"<tr><th>{row['name']}</th><td>{row['precision']:.4f}</td>" in html
        assert row["images"] == 10


def test_registration_re_renders_a_report_written_before_these_sections(tmp_path):
    import json

    _context, _html = _render(["cats", "dogs"], tmp_path / "report")
    path = report.context_path(str(tmp_path / "report"))
    older = json.load(open(path))
    del older["roc_png"], older["per_class"]
    json.dump(older, open(path, "w"))
    report.add_registration(str(tmp_path / "report"), str(tmp_path / "registered"),
                            {"name": "cats", "version": "2", "registry": "sqlite:///r.db", "champion": True,
                             "reason": "first"})
    assert "Registered <b>cats</b> version <b>2</b>" in (tmp_path / "registered").read_text()
    # kfp's HTML artifact has no extension; the page beside it is what the run's summary names.
    assert report.page_path(str(tmp_path / "registered")) == str(tmp_path / "registered.html")
    assert (tmp_path / "registered.html").read_text() == (tmp_path / "registered").read_text()
    assert report.page_path(str(tmp_path / "report.html")) == str(tmp_path / "report.html")


def _pixels_near(image, colour, tolerance=40) -> int:
    rgb = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(rgb - np.array(colour)).sum(axis=2) <= tolerance).sum())


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_chromium_screenshot_shows_the_verdict_curves_and_roc(tmp_path):
    from PIL import Image

    _context, _html = _render(["cats", "dogs"], tmp_path / "report.html")
    shot = tmp_path / "report.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=3000",
         f"--screenshot={shot}", "--window-size=1200,2600", f"file://{tmp_path / 'report.html'}"],
        check=True, capture_output=True, timeout=120,
    )
    image = Image.open(shot)
    assert image.size == (1200, 2600)
    rgb = np.asarray(image.convert("RGB"))
    assert (rgb < 240).any(axis=2).mean() > 0.02  # a page, not a blank one
    assert _pixels_near(image, (0x1A, 0x7F, 0x37)) > 200  # the green PASSED verdict
    assert _pixels_near(image, (0x1F, 0x77, 0xB4)) > 500  # the learning curves' lines (matplotlib C0)
    roc = tuple(int(report.ROC_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    assert _pixels_near(image, roc) > 500  # the ROC curve picture rendered


def test_the_report_and_the_summary_line_say_where_and_on_what_the_gap_was_measured(tmp_path):
    from tlp.components.lib import evaluation

    measured = {"split": "test", "value": 0.03, "train_photos": 20_000, "train_split_photos": 9_000_000, "seed": 42,
                "train_accuracy_interval": [0.985, 0.991], "interval": [0.027, 0.033],
                "method": evaluation.INTERVAL_METHOD}
    context = report.report_context(_results(["cats", "dogs"]), True, ["gap within max_gap"], 0.03, FEATURE, TUNED,
                                    gap_detail=measured)
    report.write_report(str(tmp_path / "report.html"), context)
    page = " ".join((tmp_path / "report.html").read_text(encoding="utf-8").split())
    assert "Overfitting gap (train - test accuracy): 0.0300, 95% interval 0.0270 to 0.0330." in page
    assert "Measured on the test split, because validation chose the best trial of this tuned run" in page
    assert "a sample of 20,000 of the 9,000,000 training photos, drawn with seed 42;" in page
    assert evaluation.INTERVAL_METHOD + "." in page
    assert report.describe_gap(measured) == (
        "gap 0.0300 (95% interval 0.0270 to 0.0330) = train - test accuracy (validation chose this tuned run's "
        "trial); train accuracy on 20,000 of 9,000,000 training photos (seed 42)")
    whole = {**measured, "split": "val", "train_photos": 64, "train_split_photos": 64}
    assert report.describe_gap(whole).endswith("= train - val accuracy; train accuracy on all 64 training photos")
