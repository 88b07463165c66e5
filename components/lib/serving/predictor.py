"""The model side of serving: the exported serving signature as a ``Predictor`` over encoded
images, the card the server shows, and the warm-up that fails at start rather than at the
first request."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tlp.components.lib import drift
from tlp.components.lib import model as model_lib
from tlp.components.lib.registry import model_digest
from tlp.components.lib.specs import ConfigError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCard:
    """What the server says about its model (page, metadata, predictions)."""

    name: str
    version: str
    class_names: list[str]
    image_size: int = 0
    source: str = ""  # the directory or registry reference it was loaded from


@dataclass
class Prediction:
    label: str
    score: float
    probabilities: list[float]
    class_names: list[str]

    def as_dict(self) -> dict:
        return {"label": self.label, "score": self.score, "probabilities": self.probabilities,
                "class_names": self.class_names}


@dataclass
class Unreadable:
    """An input the model could not decode, and why (TensorFlow's words, cleaned up)."""

    reason: str


_TF_NOISE = (re.compile(r"\{\{function_node [^}]*\}\}\s*"), re.compile(r"\s*\[Op:\w+\].*$", re.S))


def clean_tf_error(message: str) -> str:
    """TensorFlow's error text without its graph-node prefix and op suffix."""
    text = message.strip().splitlines()[0] if message.strip() else "unknown error"
    for pattern in _TF_NOISE:
        text = pattern.sub("", text)
    return text.strip() or "unknown error"


class Predictor:
    """The exported serving signature, called on a list of encoded images.

    One unreadable image makes TensorFlow refuse the whole batch; the predictor then finds the
    unreadable ones by decoding each alone and runs the rest again, so one bad upload never fails
    the requests it was batched with."""

    def __init__(self, model_dir: str, *, features: bool = False):
        self.model_dir = model_dir
        info = model_lib.read_info(model_dir)
        self.class_names = [str(name) for name in info["class_names"]]
        self.image_size = int(info.get("image_size") or 0)
        self.info = info
        # ``features``: the signature that also returns the pooled features (one forward pass), for
        # the drift watch; only models that carry a drift reference were exported with it.
        self.features = features and drift.has_reference(model_dir)
        self._serve = model_lib.load_servable(
            model_dir, model_lib.FEATURES_SIGNATURE if self.features else "serving_default")
        # The drift watch, when set: handed the raw bytes of each answered batch's images that the next
        # drift window will hold, and how many of its first images it will not (``drift_wanted``). It
        # queues them for its worker process, which prepares them and computes their features off the
        # request path (a second model pass: 1.8-2.5x per batch of 32 when it ran here).
        self.on_images: Callable[[list[bytes], int], None] | None = None
        self.drift_wanted: Callable[[int], int] | None = None  # of a batch's images, how many (the last) to watch
        # The features' width, as the signature declares it (None without features, or if unknown).
        self.feature_width: int | None = (
            self._serve.structured_outputs[model_lib.FEATURES_OUTPUT].shape[-1] if self.features else None)
        self._lock = threading.Lock()  # one batch at a time: TensorFlow already uses every core

    def __call__(self, images: list[bytes]) -> list[Prediction | Unreadable]:
        import tensorflow as tf

        if not images:
            return []
        try:
            with self._lock:
                outputs = self._serve(image_bytes=tf.constant(list(images)))
        except tf.errors.InvalidArgumentError as error:
            if len(images) == 1:  # the signature's own error is about its graph; decoding alone says why
                return [Unreadable(decode_problem(images[0]) or clean_tf_error(error.message))]
            return self._without_unreadable(images)
        if self.on_images is not None and self.features:
            # Only the images the next drift window will hold; the watch's worker prepares them as data
            # prep stores photos and computes their features, off the request path.
            skipped = len(images) - (self.drift_wanted(len(images)) if self.drift_wanted else len(images))
            self.on_images(list(images[skipped:]), skipped)
        probabilities = outputs["probabilities"].numpy()
        labels = outputs["label"].numpy()
        scores = outputs["score"].numpy()
        return [
            Prediction(labels[i].decode(), float(scores[i]), [float(p) for p in probabilities[i]],
                       list(self.class_names))
            for i in range(len(images))
        ]

    def _without_unreadable(self, images: list[bytes]) -> list[Prediction | Unreadable]:
        problems = {i: reason for i, data in enumerate(images) if (reason := decode_problem(data))}
        if not problems:  # the batch failed for another reason: try each image on its own
            return [result for data in images for result in self([data])]
        readable = [i for i in range(len(images)) if i not in problems]
        results = dict(zip(readable, self([images[i] for i in readable]), strict=True))
        return [Unreadable(problems[i]) if i in problems else results[i] for i in range(len(images))]


def decode_problem(data: bytes) -> str | None:
    """Why the serving signature cannot decode these bytes, or None if it can."""
    import tensorflow as tf

    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError as error:
        return clean_tf_error(error.message)
    return None


def load_card(model_dir: str, name: str = "", version: str = "", source: str = "") -> ModelCard:
    """The card of an exported model: ``name``/``version`` as given, else ``model`` and the
    first 12 hex digits of the model's content digest."""

    info = model_lib.read_info(model_dir)
    return ModelCard(
        name=name or "model",
        version=version or f"digest-{model_digest(model_dir)[:12]}",
        class_names=[str(c) for c in info["class_names"]],
        image_size=int(info.get("image_size") or 0),
        source=source or model_dir,
    )


def warm_up(predictor: Predictor) -> None:
    """One prediction on a blank image: traces the signature before the first request and fails
    at start, not at the first request, if the model cannot run."""
    import tensorflow as tf

    size = predictor.image_size or 32
    blank = tf.io.encode_png(tf.zeros([size, size, 3], tf.uint8)).numpy()
    [result] = predictor([blank])
    if isinstance(result, Unreadable):
        raise ConfigError(f"the model cannot classify a blank test image ({result.reason}); serve the model "
                          "directory that fine-tuning exported.")

