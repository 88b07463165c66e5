"""On the device: the fine-tuned model as LiteRT (.tflite) variants, each measured and gated.

Variants (``--export-litert``, comma-separated):

- ``float32``: the model as it is;
- ``float16``: weights stored as float16 (half the size, computed in float32);
- ``dynamic``: weights int8, activations quantized on the fly (dynamic-range quantization);
- ``int8``: weights and activations int8 (full-integer quantization), calibrated on a seeded
  sample of the TRAINING split (never test, which scores it).

Input of every variant: ``pixels`` uint8 [1, H, W, 3], RGB, already resized to the model's
image size. Not the served model's encoded-image bytes: TFLite has no DecodeJpeg builtin (only
as a Flex op, which needs the TensorFlow runtime on the device), and Android/iOS decode and
resize camera frames themselves. uint8 is what a decoded bitmap holds, and it is the same for
every variant (int8 too: the graph casts and quantizes inside). Output: ``probabilities``
float32 [1, C], in the order of ``labels.txt`` written beside the models (one class per line).

Each variant is scored with the LiteRT interpreter (``ai-edge-litert``) on the whole test split,
beside the Keras model on the same photos: accuracy, its change from the Keras model's, how many
photos changed their predicted class, file size, single-image latency on this CPU. A variant
whose accuracy drops more than ``max_quantization_drop`` is not registered (``gate``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from tlp.components.lib import model as model_lib
from tlp.components.lib.dataprep import records
from tlp.components.lib.dataprep.encode import prepare_bytes
from tlp.components.lib.registry import open_registry
from tlp.components.lib.specs import LITERT_VARIANTS, ConfigError, ServiceError, parse_litert_variants

VARIANTS = LITERT_VARIANTS
parse_variants = parse_litert_variants
LABELS_FILE = "labels.txt"
MEASUREMENTS_FILE = "litert.json"
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
# Photos of the training split that calibrate int8's activation ranges (fewer if the split is small).
CALIBRATION_PHOTOS = 100
CALIBRATION_SEED = 0
# Single-image latency (Keras and each variant) is timed on the test split's first photos, this many.
LATENCY_PHOTOS = 50
# Ops int8 keeps in float: the head (standardization Mul/Add, Dense, sigmoid/softmax); ADD also keeps
# the backbone's residual additions float.
INT8_FLOAT_OPS = ("MUL", "ADD", "FULLY_CONNECTED", "LOGISTIC", "SOFTMAX")


def file_name(variant: str) -> str:
    return f"model_{variant}.tflite"


def calibration_images(dataset_dir: str, count: int = CALIBRATION_PHOTOS, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """A seeded sample of the training split's images, uint8 [N, H, W, 3] (never the test split).
    Only the sampled photos are decoded: the training split may hold millions."""
    total = int(records.read_metadata(dataset_dir)["num_examples"]["train"])
    if not total:
        raise ConfigError(f"the train split of {dataset_dir} is empty; int8 needs training photos to calibrate on.")
    chosen = np.sort(np.random.default_rng(seed).permutation(total)[:count])
    return np.stack([image.numpy() for image, _ in records.read_split(dataset_dir, "train", positions=chosen)])


def convert(model, variant: str, num_classes: int, image_size: int, calibration: np.ndarray | None = None) -> bytes:
    """The model as a .tflite flatbuffer: ``pixels`` uint8 [1, H, W, 3] -> ``probabilities`` [1, C]."""
    import tensorflow as tf

    if variant not in VARIANTS:
        parse_variants(variant)  # raises the ConfigError naming the choices
    if variant == "int8" and (calibration is None or not len(calibration)):
        raise ConfigError("the int8 variant needs calibration images (a sample of the training split).")

    @tf.function(input_signature=[tf.TensorSpec([1, image_size, image_size, 3], tf.uint8, name=INPUT_NAME)])
    def classify(pixels):
        logits = model(tf.cast(pixels, tf.float32), training=False)
        return {OUTPUT_NAME: model_lib.probabilities(logits, num_classes)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([classify.get_concrete_function()], model)
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        # The head's per-feature standardization (a Mul by scales spanning orders of magnitude) must
        # stay its own op: fused into the Dense weights, one per-tensor int8 scale rounds most of them
        # to zero and every photo got the same probabilities (dynamic and int8).
        converter._experimental_disable_fuse_mul_and_fc = True
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        assert calibration is not None

        def representative():
            for image in calibration:
                yield [image[np.newaxis].astype(np.uint8)]

        converter.representative_dataset = representative
        # int8 kernels throughout; the uint8 input's cast stays a builtin before the first QUANTIZE.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        # The head stays float (selective quantization): its standardization scales span orders of
        # magnitude, and one per-tensor int8 scale gave every photo the same probabilities.
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(INT8_FLOAT_OPS)),
        )
        return debugger.get_nondebug_quantized_model()
    return converter.convert()


class ConversionFailed(ServiceError):
    """A variant's converter process failed or crashed; the other variants go on."""


def _run_child(variant: str, what: str, argv: list[str]) -> None:
    """``python -m tlp.components.lib.litert ARGV``; a failure or crash is this variant's ConversionFailed."""
    command = [sys.executable, "-m", __name__, *argv]
    with tempfile.TemporaryFile("w+") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        log.seek(0)
        lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    if code == 0:
        return
    how = f"crashed ({signal.Signals(-code).name})" if code < 0 else f"failed (exit {code})"
    last = f": {lines[-1]}" if lines else ""
    raise ConversionFailed(
        f"{what} the {variant} LiteRT variant {how}{last}; the other variants are kept, export without "
        f"{variant} or retry it alone with tlp export --litert {variant}."
    )


def convert_in_subprocess(model_dir: str, dataset_dir: str, variant: str, output_path: str) -> int:
    """Converts ``variant`` in its own process and returns the file's size. In the process that had
    trained the model, int8 calibration aborted with a double free: a crash in the child is this
    variant's ConversionFailed, not a dead step."""
    _run_child(variant, "converting", ["convert", model_dir, dataset_dir, variant, output_path])
    return os.path.getsize(output_path)


def score_in_subprocess(variant: str, tflite_path: str, images_path: str) -> tuple[np.ndarray, float]:
    """The variant's probabilities on ``images_path`` (uint8 [N, H, W, 3], .npy) and its median
    single-image latency (ms), from the interpreter in a process without TensorFlow: beside TensorFlow
    (the Keras model run, or the converter), allocate_tensors aborted and int8 ended in a double free."""
    scores = tflite_path + ".scores.npz"
    _run_child(variant, "scoring", ["score", tflite_path, images_path, scores])
    with np.load(scores) as loaded:
        return loaded["probabilities"], float(loaded["latency_ms"])


def _child_main(argv: list[str]) -> int:
    """``convert MODEL_DIR DATASET_DIR VARIANT OUT.tflite`` or ``score MODEL.tflite IMAGES.npy OUT.npz``
    (the latter imports no TensorFlow)."""
    if argv[0] == "convert":
        model_dir, dataset_dir, variant, output_path = argv[1:]
        model = model_lib.load_keras(model_dir)
        num_classes = len(model_lib.read_info(model_dir)["class_names"])
        calibration = calibration_images(dataset_dir) if variant == "int8" else None
        flatbuffer = convert(model, variant, num_classes, int(model.input.shape[1]), calibration)
        with open(output_path, "wb") as handle:
            handle.write(flatbuffer)
        return 0
    tflite_path, images_path, output_path = argv[1:]
    images = np.load(images_path, mmap_mode="r")  # read from disk as scored: the test split may be large
    classifier = LiteRTClassifier(tflite_path)
    probabilities = classifier.probabilities(images)
    classifier.probabilities_one(images[0])  # warm up
    # Timed on the same first photos as the Keras model, one at a time.
    timed = [np.asarray(image) for image in images[:LATENCY_PHOTOS]]
    np.savez(output_path, probabilities=probabilities, latency_ms=_median_ms(classifier.probabilities_one, timed))
    return 0


class LiteRTClassifier:
    """A .tflite variant in the LiteRT interpreter: ``probabilities(images)`` one image per call."""

    def __init__(self, path: str, num_threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise ConfigError(
                f"the LiteRT interpreter is not installed ({error}); pip install ai-edge-litert==2.3.0 "
                "(tlp's training and CPU images have it, the serving image does not)."
            ) from error
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        (self.input,) = self.interpreter.get_input_details()
        (self.output,) = self.interpreter.get_output_details()
        self.image_size = int(self.input["shape"][1])

    def probabilities_one(self, image: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], image[np.newaxis].astype(np.uint8))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])[0].astype(np.float32)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.probabilities_one(image) for image in images])


def read_labels(directory: str) -> list[str]:
    import tensorflow as tf

    path = os.path.join(directory, LABELS_FILE)
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"{directory} holds no {LABELS_FILE}; export the model with tlp export --litert first.")
    with tf.io.gfile.GFile(path) as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def read_test_split(dataset_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole test split: uint8 images [N, H, W, 3] and labels [N]."""
    images, labels = [], []
    for image, label in records.read_split(dataset_dir, "test"):
        images.append(image.numpy())
        labels.append(int(label))
    return np.stack(images), np.array(labels)


def _median_ms(call, inputs) -> float:
    times = []
    for item in inputs:
        start = time.perf_counter()
        call(item)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def export_and_score(model_dir: str, dataset_dir: str, output_dir: str, variants: list[str]) -> dict:
    """Converts each variant into ``output_dir`` (with labels.txt), scores it and the Keras model on the
    whole test split, and writes the measurements (litert.json). Returns them:
    ``{"keras": {...}, "variants": {variant: {...}}, "input": ..., "calibration": ...}``."""
    import tensorflow as tf

    model = model_lib.load_keras(model_dir)
    class_names = model_lib.read_info(model_dir)["class_names"]
    data_classes = records.read_metadata(dataset_dir)["class_names"]
    if data_classes != class_names:
        raise ConfigError(
            f"the model was trained on classes {class_names} but the data set has {data_classes}; "
            "export with the data set the model was trained on."
        )
    num_classes, image_size = len(class_names), int(model.input.shape[1])
    keras_one = tf.function(lambda x: model_lib.probabilities(model(x, training=False), num_classes))
    staging = tempfile.mkdtemp(prefix="tlp-litert-")
    try:
        return _export_and_score(model_dir, dataset_dir, output_dir, variants, staging, keras_one,
                                 class_names, image_size)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage_test_split(dataset_dir: str, path: str, image_size: int, score) -> tuple[np.ndarray, np.ndarray]:
    """Writes the test split's images to ``path`` (.npy, uint8 [N, H, W, 3]) batch by batch, scoring
    each batch with ``score`` on the way: nothing holds the whole split in memory. Returns the
    labels [N] and the scores [N, C]."""
    count = int(records.read_metadata(dataset_dir)["num_examples"]["test"])
    staged = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, image_size, image_size, 3))
    labels, scores, position = np.empty(count, dtype=np.int64), [], 0
    for images, batch_labels in records.read_split(dataset_dir, "test", 64):
        end = position + len(batch_labels)
        if end > count:
            raise ServiceError(f"the test split of {dataset_dir} holds more photos than its metadata says ({count}); "
                               "prepare the data set again.")
        staged[position:end], labels[position:end] = images.numpy(), batch_labels.numpy()
        scores.append(score(images).numpy())
        position = end
    if position != count:
        raise ServiceError(f"the test split of {dataset_dir} holds {position} photos, its metadata says {count}; "
                           "prepare the data set again.")
    staged.flush()
    del staged
    return labels, np.concatenate(scores)


def _export_and_score(model_dir: str, dataset_dir: str, output_dir: str, variants: list[str], staging: str,
                      keras_one, class_names: list[str], image_size: int) -> dict:
    import tensorflow as tf

    num_classes = len(class_names)
    test_images = os.path.join(staging, "test_images.npy")
    labels, keras_probs = _stage_test_split(dataset_dir, test_images, image_size, keras_one)
    keras_predicted = keras_probs.argmax(axis=1)
    keras_accuracy = float((keras_predicted == labels).mean())
    first = np.load(test_images, mmap_mode="r")[:LATENCY_PHOTOS]
    single = [tf.constant(np.asarray(image)[np.newaxis]) for image in first]
    keras_one(single[0])  # trace once, outside the timing
    keras_latency = _median_ms(keras_one, single)

    tf.io.gfile.makedirs(output_dir)
    with tf.io.gfile.GFile(os.path.join(output_dir, LABELS_FILE), "w") as handle:
        handle.write("".join(f"{name}\n" for name in class_names))
    train_photos = int(records.read_metadata(dataset_dir)["num_examples"]["train"])
    calibration = min(CALIBRATION_PHOTOS, train_photos) if "int8" in variants else None
    measured: dict = {}
    failed: dict[str, str] = {}
    for variant in variants:
        local = os.path.join(staging, file_name(variant))
        try:
            size = convert_in_subprocess(model_dir, dataset_dir, variant, local)
            probs, latency_ms = score_in_subprocess(variant, local, test_images)
        except ConversionFailed as error:
            failed[variant] = str(error)
            print(f"  litert {variant}: {error}", flush=True)
            continue
        tf.io.gfile.copy(local, os.path.join(output_dir, file_name(variant)), overwrite=True)
        predicted = probs.argmax(axis=1)
        accuracy = float((predicted == labels).mean())
        measured[variant] = {
            "file": file_name(variant),
            "size_bytes": size,
            "accuracy": accuracy,
            "accuracy_change": accuracy - keras_accuracy,
            "changed_predictions": int((predicted != keras_predicted).sum()),
            "max_probability_difference": float(np.abs(probs - keras_probs).max()),
            "latency_ms": latency_ms,
        }
        print(f"  litert {variant}: {size / 1e6:.2f} MB, accuracy {accuracy:.3f} "
              f"({accuracy - keras_accuracy:+.3f} vs Keras), {measured[variant]['changed_predictions']} of "
              f"{len(labels)} predictions changed, {measured[variant]['latency_ms']:.2f} ms/image", flush=True)
    result = {
        "input": {"name": INPUT_NAME, "shape": [1, image_size, image_size, 3], "dtype": "uint8",
                  "meaning": "RGB pixels 0-255, resized to the model's image size"},
        "output": {"name": OUTPUT_NAME, "shape": [1, num_classes], "dtype": "float32", "labels": LABELS_FILE},
        "class_names": class_names,
        "test_photos": len(labels),
        "calibration": None if calibration is None else {
            "split": "train", "photos": calibration, "seed": CALIBRATION_SEED},
        "keras": {"accuracy": keras_accuracy, "latency_ms": keras_latency},
        "variants": measured,
        # Variants whose converter failed or crashed: the sentence saying so (they are not registered).
        "failed": failed,
    }
    with tf.io.gfile.GFile(os.path.join(output_dir, MEASUREMENTS_FILE), "w") as handle:
        json.dump(result, handle, indent=2)
    return result


def gate(measurements: dict, max_quantization_drop: float) -> tuple[list[str], dict[str, str]]:
    """Which variants may be registered: those losing at most ``max_quantization_drop`` test accuracy
    against the Keras model. Returns (passed variants, {variant: why}) with a reason for every variant."""
    passed, reasons = [], {}
    keras_accuracy = measurements["keras"]["accuracy"]
    for variant, m in measurements["variants"].items():
        drop = keras_accuracy - m["accuracy"]
        if drop > max_quantization_drop + 1e-12:
            reasons[variant] = (
                f"not registered: test accuracy {m['accuracy']:.3f} is {drop:.3f} below the Keras model's "
                f"{keras_accuracy:.3f}, more than --max-quantization-drop {max_quantization_drop:.3f}"
            )
        else:
            passed.append(variant)
            reasons[variant] = (
                f"registered: test accuracy {m['accuracy']:.3f} ({m['accuracy_change']:+.3f} vs Keras "
                f"{keras_accuracy:.3f}), within --max-quantization-drop {max_quantization_drop:.3f}"
            )
    for variant, error in measurements.get("failed", {}).items():
        reasons[variant] = f"not registered: {error}"
    return passed, reasons


# Recorded per registered variant (MLflow run metrics, Vertex AI version record): litert.VARIANT.KEY.
RECORDED_METRICS = ("size_bytes", "accuracy", "accuracy_change", "changed_predictions", "latency_ms")


def export_and_register(
    model_dir: str, dataset_dir: str, output_dir: str, variants: list[str], max_quantization_drop: float,
    registry_uri: str = "", name: str = "", version: str = "",
) -> dict:
    """``export_and_score``, then the gate; with a registered version (``registry_uri``, ``name``,
    ``version``) the variants that passed become its artifacts, with their metrics, and every variant's
    verdict is a tag on it. Returns what the summary shows: the measurements, the gate (which variants
    passed, a reason for each) and where the variants were registered. litert.json holds the same."""
    measured = export_and_score(model_dir, dataset_dir, output_dir, variants)
    passed, reasons = gate(measured, max_quantization_drop)
    outcome = {
        **measured,
        "gate": {"max_quantization_drop": max_quantization_drop, "passed": passed, "reasons": reasons,
                 "not_registered": sorted(set(variants) - set(passed))},
        "registered": None,
    }
    _write_json(os.path.join(output_dir, MEASUREMENTS_FILE), outcome)
    if registry_uri and name and version:
        files = [file_name(variant) for variant in passed]
        metrics = {f"litert.{variant}.{key}": float(measured["variants"][variant][key])
                   for variant in passed for key in RECORDED_METRICS}
        tags = {"litert.variants": ",".join(passed) or "none",
                **{f"litert.{variant}.gate": reason for variant, reason in reasons.items()}}
        where = open_registry(registry_uri).attach_files(
            name, version, output_dir, [*files, LABELS_FILE, MEASUREMENTS_FILE] if files else [],
            artifact_path="litert", metrics=metrics, tags=tags,
        )
        outcome["registered"] = {"registry": registry_uri, "name": name, "version": version, "variants": passed,
                                 "location": where}
        _write_json(os.path.join(output_dir, MEASUREMENTS_FILE), outcome)
    return outcome


def _write_json(path: str, value: dict) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as handle:
        json.dump(value, handle, indent=2)


def table(measurements: dict, reasons: dict[str, str] | None = None) -> str:
    """A Markdown table: variant, size, accuracy, change, changed predictions, latency (and the gate)."""
    keras = measurements["keras"]
    rows = [
        "| variant | size | test accuracy | change | predictions changed | latency (1 image) | gate |",
        "|---|---|---|---|---|---|---|",
        f"| Keras | - | {keras['accuracy']:.3f} | - | - | {keras['latency_ms']:.2f} ms | - |",
    ]
    for variant, m in measurements["variants"].items():
        verdict = (reasons or {}).get(variant, "").split(":", 1)[0]
        rows.append(
            f"| {variant} | {m['size_bytes'] / 1e6:.2f} MB | {m['accuracy']:.3f} | {m['accuracy_change']:+.3f} | "
            f"{m['changed_predictions']} of {measurements['test_photos']} | {m['latency_ms']:.2f} ms | {verdict} |"
        )
    for variant in measurements.get("failed", {}):
        rows.append(f"| {variant} | - | - | - | - | - | conversion failed |")
    return "\n".join(rows)


def decode_for_device(data: bytes, image_size: int) -> np.ndarray:
    """Encoded image -> uint8 [H, W, 3] as data prep stored the training photos (EXIF orientation,
    alpha over white, antialiased bilinear resize, JPEG q95, decoded again): what the model learnt
    from, and what an app's own decoder and resize should come close to. Data prep's own code, so
    there is no second preparation path to drift from it."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(prepare_bytes(data, image_size))) as prepared:
        return np.asarray(prepared.convert("RGB"), dtype=np.uint8)


def classify_files(tflite_path: str, image_paths: list[str]) -> list[dict]:
    """``tlp predict model.tflite FILES``: one row per file, with the labels.txt beside the model. A file
    that cannot be decoded gets a row with its ``error`` (it is not skipped)."""
    if not os.path.isfile(tflite_path):
        raise ConfigError(f"{tflite_path} does not exist; give the path of a .tflite file written by tlp export.")
    class_names = read_labels(os.path.dirname(os.path.abspath(tflite_path)))
    classifier = LiteRTClassifier(tflite_path)
    rows: list[dict] = []
    for path in image_paths:
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            image = decode_for_device(data, classifier.image_size)
        except MemoryError:
            raise
        except Exception as error:  # the bytes were read: a decoder failure is this file's row, as data prep skips it
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            rows.append({"image": path, "error": f"not an image that can be decoded ({reason})"})
            continue
        probs = classifier.probabilities_one(image)
        index = int(probs.argmax())
        rows.append({"image": path, "label": class_names[index], "probability": float(probs[index]),
                     "probabilities": [float(p) for p in probs]})
    return rows


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
