"""Serve a candidate once before promoting it (TFX InfraValidator's idea).

``infra_validate`` starts the real server on the candidate model (a separate process by
default, so a model that crashes TensorFlow cannot take registration down with it), sends one
real request with test images in Vertex AI's body, and compares the answers with the
probabilities evaluation computes for the same images. A model that does not load, does not
answer, or answers differently fails, with the reason.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from tlp.components.lib import model as model_lib
from tlp.components.lib import serving
from tlp.components.lib.dataprep import records
from tlp.components.lib.specs import ConfigError, ServiceError

DEFAULT_IMAGES = 8
DEFAULT_TOLERANCE = 1e-4  # decode/resize in the signature vs evaluation's decoded JPEGs: ~1e-6 apart


@dataclass
class InfraResult:
    passed: bool
    reason: str
    images: int = 0
    max_abs_difference: float | None = None
    seconds: float = 0.0
    mode: str = "subprocess"
    server_log: str = ""  # the server's last lines when it failed

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"infra validation {verdict}: {self.reason} ({self.seconds:.1f} s, {self.mode})"


def split_images(dataset_dir: str, count: int = DEFAULT_IMAGES, split: str = "test") -> list[bytes]:
    """The first ``count`` encoded images of a prepared data set's split (the JPEGs data prep wrote)."""
    import tensorflow as tf


    metadata = records.read_metadata(dataset_dir)
    paths = [os.path.join(dataset_dir, name) for name in metadata["files"][split]]
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    found = []
    for record in tf.data.TFRecordDataset(paths).take(count):
        found.append(tf.io.parse_single_example(record, spec)["image"].numpy())
    return found


def evaluation_probabilities(model_dir: str, encoded: list[bytes]) -> list[list[float]]:
    """Probabilities the way evaluation computes them: the Keras model on decoded uint8 images."""
    import numpy as np
    import tensorflow as tf


    info = model_lib.read_info(model_dir)
    size = int(info["image_size"])
    model = model_lib.load_keras(model_dir)
    pixels = [tf.io.decode_image(data, channels=3, expand_animations=False) for data in encoded]
    batch = tf.stack([
        image if tuple(image.shape[:2]) == (size, size)
        else tf.cast(tf.round(tf.clip_by_value(tf.image.resize(tf.cast(image, tf.float32), [size, size],
                                                               antialias=True), 0, 255)), tf.uint8)
        for image in pixels
    ])
    probabilities = model_lib.probabilities(model(batch, training=False), len(info["class_names"]))
    return np.asarray(probabilities).tolist()


def _load_images(images) -> list[bytes]:
    if isinstance(images, str):
        if os.path.isdir(images) and os.path.exists(os.path.join(images, "metadata.json")):
            return split_images(images)
        images = [images]
    loaded = []
    for item in images:
        if isinstance(item, bytes):
            loaded.append(item)
        else:
            with open(item, "rb") as handle:
                loaded.append(handle.read())
    return loaded


def _predict(url: str, name: str, encoded: list[bytes], timeout: float) -> dict:
    body = json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(d).decode()}} for d in encoded]})
    request = urllib.request.Request(f"{url}/v1/models/{name}:predict", data=body.encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def infra_validate(
    model_dir: str,
    images,
    expected_probabilities: list[list[float]] | None = None,
    *,
    mode: str = "subprocess",
    tolerance: float = DEFAULT_TOLERANCE,
    timeout: float = 300.0,
) -> InfraResult:
    """Serves ``model_dir`` once and checks its answers.

    Args:
        model_dir: The candidate's servable model directory.
        images: A prepared data set directory (its first test images are used), image file
            paths, or encoded image bytes.
        expected_probabilities: Per image, the probabilities evaluation gave; None computes them
            the way evaluation does.
        mode: ``subprocess`` (the server in its own process, ``python -m tlp.components.lib.serving``) or
            ``inprocess`` (a server thread in this process).
        tolerance: Largest allowed absolute difference of any probability.
        timeout: Seconds allowed for the server to load the model and answer.

    Returns:
        An ``InfraResult``: passed or not, why, the largest difference, the time taken.
    """
    import numpy as np


    if mode not in ("subprocess", "inprocess"):
        raise ConfigError(f"infra validation mode {mode!r} is not one I know; use 'subprocess' or 'inprocess'.")
    started = time.monotonic()
    encoded = _load_images(images)
    if not encoded:
        return InfraResult(False, "no test images to send", mode=mode)
    try:
        expected = expected_probabilities if expected_probabilities is not None else \
            evaluation_probabilities(model_dir, encoded)
    except (OSError, ValueError, KeyError) as error:
        return InfraResult(False, f"the model does not load ({error})", len(encoded), mode=mode,
                           seconds=time.monotonic() - started)
    if len(expected) != len(encoded):
        raise ConfigError(f"{len(expected)} expected probability rows were given for {len(encoded)} images; "
                          "give one row per test image, in the order of the images.")
    name = "candidate"
    log_path = os.path.join(tempfile.mkdtemp(prefix="tlp-infra-"), "server.log")
    answer, failure = None, ""
    try:
        if mode == "subprocess":
            port = serving.free_port()
            url = f"http://127.0.0.1:{port}"
            command = [sys.executable, "-m", "tlp.components.lib.serving", model_dir, "--port", str(port),
                       "--name", name, "--version", "candidate"]
            with serving.server_process(command, url, name, log_path, timeout=timeout):
                answer = _predict(url, name, encoded, timeout)
        else:
            predictor = serving.Predictor(model_dir)
            app = serving.create_app(predictor, serving.load_card(model_dir, name, "candidate"))
            with serving.running_in_thread(app) as url:
                answer = _predict(url, name, encoded, timeout)
    except urllib.error.HTTPError as error:
        failure = f"the server answered {error.code}: {error.read()[:300].decode(errors='replace')}"
    except (ServiceError, RuntimeError, OSError, ValueError, KeyError) as error:
        failure = f"the model could not be served ({error})"
    seconds = time.monotonic() - started
    if failure or answer is None:
        return InfraResult(False, failure, len(encoded), None, seconds, mode, serving.log_tail(log_path))
    served = np.asarray([p["probabilities"] for p in answer["predictions"]], dtype=np.float64)
    wanted = np.asarray(expected, dtype=np.float64)
    if served.shape != wanted.shape:
        return InfraResult(False, f"the server answered probabilities of shape {served.shape}, evaluation "
                                  f"{wanted.shape}", len(encoded), None, seconds, mode)
    difference = float(np.max(np.abs(served - wanted)))
    passed = difference <= tolerance
    reason = (f"served {len(encoded)} test images; probabilities within {difference:.2g} of evaluation's "
              f"(tolerance {tolerance:g})") if passed else (
        f"the served model answers differently from evaluation: probabilities up to {difference:.3g} apart "
        f"(tolerance {tolerance:g}) on {len(encoded)} test images")
    return InfraResult(passed, reason, len(encoded), difference, seconds, mode)
