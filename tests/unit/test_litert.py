"""LiteRT export (components/lib/litert.py): conversion, scoring with the interpreter, the gate."""

import json
import os
from unittest import mock

import numpy as np
import pytest

from tlp.components.lib import litert
from tlp.components.lib.specs import ConfigError


def test_variants_are_parsed_in_order_and_unknown_ones_refused():
    assert litert.parse_variants("int8, float16,int8") == ["int8", "float16"]
    assert litert.parse_variants("") == []
    with pytest.raises(ConfigError, match="unknown LiteRT variant 'int4'.*float32, float16, dynamic, int8"):
        litert.parse_variants("float16,int4")


def _measured(keras_accuracy, **variant_accuracies):
    return {
        "keras": {"accuracy": keras_accuracy, "latency_ms": 5.0},
        "test_photos": 200,
        "variants": {
            name: {"accuracy": a, "accuracy_change": a - keras_accuracy, "size_bytes": 1_000_000,
                   "changed_predictions": 3, "latency_ms": 1.0}
            for name, a in variant_accuracies.items()
        },
    }


def test_gate_keeps_variants_within_the_drop_and_says_why_for_each():
    measured = _measured(0.950, float16=0.950, dynamic=0.945, int8=0.930)
    passed, reasons = litert.gate(measured, 0.01)
    assert passed == ["float16", "dynamic"]
    assert reasons["int8"] == (
        "not registered: test accuracy 0.930 is 0.020 below the Keras model's 0.950, more than "
        "--max-quantization-drop 0.010"
    )
    assert reasons["dynamic"].startswith("registered: test accuracy 0.945 (-0.005 vs Keras 0.950)")
    # A variant that gains accuracy passes too; a drop of exactly the limit passes.
    assert litert.gate(_measured(0.90, int8=0.92, dynamic=0.89), 0.01)[0] == ["int8", "dynamic"]
    table = litert.table(measured, reasons)
    assert "| int8 | 1.00 MB | 0.930 | -0.020 | 3 of 200 | 1.00 ms | not registered |" in table


@pytest.fixture(scope="module")
def exported(sample_dataset, head_model, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("litert"))
    return output, litert.export_and_score(head_model[0], sample_dataset, output, ["float32", "float16", "dynamic"])


@pytest.mark.slow  # four conversions and the interpreter over the test split (about 30 s)
def test_every_variant_is_written_scored_and_measured(exported, sample_dataset, head_model, tmp_path):
    output, measured = exported
    from tlp.components.lib.dataprep import records

    metadata = records.read_metadata(sample_dataset)
    assert litert.read_labels(output) == measured["class_names"] == metadata["class_names"]
    assert json.loads(open(os.path.join(output, litert.MEASUREMENTS_FILE)).read()) == measured
    images, labels = litert.read_test_split(sample_dataset)
    assert measured["test_photos"] == len(labels) > 0
    from tlp.pipelines.summary import undeclared_keys  # the summary reference page declares each key

    passed, reasons = litert.gate(measured, 0.01)
    section = {**measured, "gate": {"max_quantization_drop": 0.01, "passed": passed, "reasons": reasons,
                                    "not_registered": []}, "registered": None, "directory": output}
    assert undeclared_keys({"litert": section}) == []
    sizes = {}
    np.save(tmp_path / "test.npy", images)
    for variant, m in measured["variants"].items():
        path = os.path.join(output, litert.file_name(variant))
        sizes[variant] = os.path.getsize(path)
        assert m["size_bytes"] == sizes[variant]
        # The interpreter's own predictions (in a process without TensorFlow) give the recorded accuracy.
        probabilities, latency_ms = litert.score_in_subprocess(variant, path, str(tmp_path / "test.npy"))
        assert probabilities.shape == (len(labels), 2) and latency_ms > 0
        assert m["accuracy"] == pytest.approx(float((probabilities.argmax(axis=1) == labels).mean()))
        assert m["accuracy_change"] == pytest.approx(m["accuracy"] - measured["keras"]["accuracy"])
        assert 0 <= m["changed_predictions"] <= len(labels) and m["latency_ms"] > 0
    # float32 is the Keras model itself; quantized weights shrink the file.
    assert measured["variants"]["float32"]["max_probability_difference"] < 1e-4
    assert measured["variants"]["float32"]["changed_predictions"] == 0
    assert sizes["float16"] < 0.6 * sizes["float32"] and sizes["dynamic"] < 0.35 * sizes["float32"]
    assert measured["calibration"] is None and measured["failed"] == {}  # no int8 asked for
    assert measured["keras"]["latency_ms"] > 0



@pytest.mark.slow
def test_dynamic_range_variant_predicts_what_keras_does(exported):
    """The head's standardization scales span orders of magnitude; fused into the Dense weights and
    int8-quantized per tensor they rounded to zero, and every photo got the same probabilities."""
    _, measured = exported
    dynamic, photos = measured["variants"]["dynamic"], measured["test_photos"]
    assert dynamic["changed_predictions"] <= max(1, photos // 20), dynamic
    assert dynamic["max_probability_difference"] < 0.25, dynamic


@pytest.fixture(scope="module")
def calibrated_head_model(sample_dataset, tmp_path_factory):
    """A head on the benchmark's calibrated random weights: pooled features of order 1, as with ImageNet
    weights (with --weights none they are ~1e-11, and no int8 activation range survives that)."""
    from bench.workloads import calibrate_weights
    from tests.conftest import SMALL, settings
    from tlp.components.lib.training import train_head

    root = tmp_path_factory.mktemp("calibrated")
    weights = str(root / "base.h5")
    calibrate_weights(sample_dataset, weights, SMALL["alpha"], SMALL["image_size"], seed=42)
    train_head(sample_dataset, str(root / "model"), settings(alpha=SMALL["alpha"], weights=weights, epochs=5,
                                                             batch_size=16))
    return str(root / "model")


@pytest.mark.slow
def test_int8_variant_predicts_what_keras_does(sample_dataset, calibrated_head_model, tmp_path):
    """Quantized to int8 with the head, the standardization's scales rounded to zero: one constant output."""
    from tlp.components.lib import model as model_lib

    path = str(tmp_path / litert.file_name("int8"))
    litert.convert_in_subprocess(calibrated_head_model, sample_dataset, "int8", path)
    images, _ = litert.read_test_split(sample_dataset)
    np.save(tmp_path / "test.npy", images)
    probabilities, _ = litert.score_in_subprocess("int8", path, str(tmp_path / "test.npy"))
    keras = model_lib.load_keras(calibrated_head_model)(images.astype("float32"))
    keras = model_lib.probabilities(keras, 2).numpy()
    changed = int((probabilities.argmax(axis=1) != keras.argmax(axis=1)).sum())
    assert changed <= max(1, len(images) // 20), (changed, probabilities[:, 1], keras[:, 1])

@pytest.mark.slow
def test_int8_calibrates_on_a_seeded_sample_of_the_training_split(sample_dataset):
    first = litert.calibration_images(sample_dataset, count=10, seed=3)
    assert first.shape == (10, 64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, litert.calibration_images(sample_dataset, count=10, seed=3))
    assert not np.array_equal(first, litert.calibration_images(sample_dataset, count=10, seed=4))
    test_images, _ = litert.read_test_split(sample_dataset)
    test_bytes = {image.tobytes() for image in test_images}
    assert not any(image.tobytes() in test_bytes for image in litert.calibration_images(sample_dataset, count=1000))


def test_int8_calibration_decodes_only_its_sample(sample_dataset, monkeypatch):
    """The training split may hold millions of photos: only the sampled ones are decoded (the same
    sample as a decode-everything-then-choose would draw)."""
    from tlp.components.lib.dataprep import records

    everything = [image.numpy() for image, _ in records.read_split(sample_dataset, "train")]
    expected = np.stack([everything[i] for i in sorted(np.random.default_rng(3).permutation(len(everything))[:5])])
    decoded = []
    read_split = records.read_split

    def counted(*args, **kwargs):
        for item in read_split(*args, **kwargs):
            decoded.append(item)
            yield item

    monkeypatch.setattr(records, "read_split", counted)
    np.testing.assert_array_equal(litert.calibration_images(sample_dataset, count=5, seed=3), expected)
    assert len(decoded) == 5 < len(everything)


def test_the_test_split_is_staged_batch_by_batch_and_its_count_checked(sample_dataset, tmp_path):
    import tensorflow as tf

    path = str(tmp_path / "test.npy")
    seen = []
    labels, scores = litert._stage_test_split(sample_dataset, path, 64, lambda batch: seen.append(len(batch)) or
                                              tf.zeros([len(batch), 2]))
    images, expected_labels = litert.read_test_split(sample_dataset)
    np.testing.assert_array_equal(np.load(path, mmap_mode="r"), images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert scores.shape == (len(images), 2) and max(seen) <= 64 and sum(seen) == len(images)


def test_a_photo_for_the_device_is_prepared_as_data_prep_stored_the_training_photos():
    """EXIF orientation and transparency as data prep handles them (review: the served model's
    decoder ignored the first and put transparent pixels on black)."""
    import io

    from PIL import Image

    from tlp.components.lib.dataprep.encode import prepare_bytes

    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    wide[:, :40] = (250, 0, 0)  # left half red, right half black
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: red on top
    rotated = io.BytesIO()
    Image.fromarray(wide).save(rotated, "JPEG", exif=exif, quality=95)
    clear = io.BytesIO()
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(clear, "PNG")
    for data in (rotated.getvalue(), clear.getvalue()):
        stored = np.asarray(Image.open(io.BytesIO(prepare_bytes(data, 32))).convert("RGB"))
        np.testing.assert_array_equal(litert.decode_for_device(data, 32), stored)
    turned = litert.decode_for_device(rotated.getvalue(), 32)
    assert turned[2, 16, 0] > 200 and turned[29, 16, 0] < 50  # red on top, as the camera held it
    assert litert.decode_for_device(clear.getvalue(), 32).min() > 250  # transparent is white, not black


def test_export_command_refuses_unknown_variants_and_a_missing_dataset(tmp_path, capsys):
    from tlp.pipelines.cli import main

    assert main(["export", str(tmp_path), "--litert", "int4", "--output", str(tmp_path / "out")]) != 0
    assert "unknown LiteRT variant 'int4'" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--litert", "int8", "--output", str(tmp_path / "out")]) != 0
    assert "--dataset: give the prepared data set the model was trained on" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_with_a_tflite_model_agrees_with_keras(exported, sample_dataset, head_model, tmp_path, capsys):
    from PIL import Image

    from tlp.components.lib import model as model_lib
    from tlp.pipelines.cli import main

    output, measured = exported
    images, _ = litert.read_test_split(sample_dataset)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(images[:4]):
        Image.fromarray(image).save(folder / f"{i}.png")  # lossless: the same pixels the test scored
    (folder / "broken.jpg").write_bytes(b"not an image")
    model = model_lib.load_keras(head_model[0])
    keras_labels = model_lib.probabilities(model(images[:4].astype("float32")), 2).numpy().argmax(axis=1)
    assert main(["predict", os.path.join(output, litert.file_name("float32")), str(folder)]) == 1  # one unreadable
    lines = capsys.readouterr().out.strip().splitlines()
    rows = dict(line.split("\t")[:2] for line in lines)
    assert rows[str(folder / "broken.jpg")] == "error"
    assert [rows[str(folder / f"{i}.png")] for i in range(4)] == [measured["class_names"][k] for k in keras_labels]


def test_a_converter_crash_is_an_error_naming_the_variant(tmp_path, monkeypatch):
    """Each variant converts in its own process: one whose converter aborts (the int8 double free seen
    after training in the same process) is a ConversionFailed naming it, and this process lives on."""
    aborting = tmp_path / "python"
    aborting.write_text("#!/bin/sh\necho 'free(): double free detected in tcache 2' >&2\nkill -ABRT $$\n")
    aborting.chmod(0o755)
    monkeypatch.setattr(litert.sys, "executable", str(aborting))
    with pytest.raises(litert.ConversionFailed) as error:
        litert.convert_in_subprocess(str(tmp_path), str(tmp_path), "int8", str(tmp_path / "model_int8.tflite"))
    assert str(error.value).startswith(
        "converting the int8 LiteRT variant crashed (SIGABRT): free(): double free detected in tcache 2;"
    )
    assert "tlp export --litert int8" in str(error.value)


@pytest.mark.slow
def test_a_crashed_variant_is_recorded_and_gated_out_and_the_others_go_on(
    sample_dataset, head_model, tmp_path, monkeypatch
):
    real = litert.convert_in_subprocess

    def int8_crashes(model_dir, dataset_dir, variant, output_path):
        python = "/bin/false" if variant == "int8" else litert.sys.executable  # int8's converter exits 1
        with mock.patch.object(litert.sys, "executable", python):
            return real(model_dir, dataset_dir, variant, output_path)

    monkeypatch.setattr(litert, "convert_in_subprocess", int8_crashes)
    measured = litert.export_and_score(head_model[0], sample_dataset, str(tmp_path), ["int8", "float16"])
    assert list(measured["variants"]) == ["float16"] and os.path.isfile(tmp_path / litert.file_name("float16"))
    assert measured["failed"]["int8"].startswith("converting the int8 LiteRT variant failed (exit 1)")
    passed, reasons = litert.gate(measured, 0.01)
    assert "int8" not in passed and reasons["int8"].startswith("not registered: converting the int8")
    assert "| int8 | - | - | - | - | - | conversion failed |" in litert.table(measured, reasons)


def test_the_run_summary_lists_every_variant_with_its_verdict():
    from tlp.pipelines.summary import _litert_lines

    crashed = "scoring the int8 LiteRT variant crashed (SIGABRT)"
    measured = {**_measured(0.95, float16=0.95), "failed": {"int8": crashed}}
    passed, reasons = litert.gate(measured, 0.01)
    lines = _litert_lines({**measured, "gate": {"passed": passed, "reasons": reasons}, "directory": "/runs/litert"})
    assert lines[0] == "  litert    /runs/litert (Keras: test accuracy 0.9500, 5.00 ms/image)"
    assert lines[1].startswith("            float16: 1.00 MB, +0.0000, 3 changed, 1.00 ms; registered: test accuracy")
    assert lines[2] == f"            int8: not registered: {crashed}"
