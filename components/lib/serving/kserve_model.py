"""The KServe adapter: our predictor as a ``kserve.Model`` (v1 and v2 requests in, Vertex AI's
prediction shape out, micro-batched), and the Prometheus metrics we add to KServe's."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from tlp.components.lib.serving.batching import MicroBatcher
from tlp.components.lib.serving.predictor import ModelCard, Predictor, Unreadable
from tlp.components.lib.serving.protocol import (
    EXPECTED_INSTANCE,
    INPUT_NAME,
    RequestError,
    bad_instance,
    images_from_instances,
    images_from_v2,
)
from tlp.components.lib.settings import ServeOptions


def import_kserve():
    """KServe parses ``sys.argv`` when imported (kserve.model_server); keep our options away from it."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve
    finally:
        sys.argv = saved
    return kserve


_METRICS: tuple = ()


def metrics():
    """Prometheus metrics of our own (KServe adds its per-step latency histograms): the batch
    size histogram and the refused-requests counter."""
    global _METRICS
    from prometheus_client import REGISTRY, Counter, Histogram

    if not _METRICS:
        names = REGISTRY._names_to_collectors  # one process may build several apps (tests): register once
        batch = names.get("tlp_batch_size") or Histogram(
            "tlp_batch_size", "Images per batch run by the model", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        refused = names.get("tlp_refused_requests") or Counter(
            "tlp_refused_requests", "Requests refused with a 4xx, by problem", ["problem"])
        _METRICS = (batch, refused)
    return _METRICS


def make_model(predictor: Predictor, card: ModelCard, options: ServeOptions, on_stop=None):
    """The KServe model: decodes v1/v2 requests, batches, answers Vertex AI's prediction shape.
    ``on_stop``: called when the server stops the model (e.g. to end the drift watch)."""
    # Any to the checker: KServe ships no type information.
    kserve_model: Any = import_kserve().Model
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    batch_histogram, _ = metrics()

    @dataclass
    class Decoded:
        images: list[bytes]
        request: object = None  # the v2 InferRequest, if it came that way
        predictions: list = field(default_factory=list)

    class ImageClassifier(kserve_model):
        def __init__(self):
            super().__init__(card.name)
            self.batcher = MicroBatcher(predictor, options.max_batch, options.max_latency_ms,
                                        batch_histogram.observe)
            self.ready = True

        def load(self) -> bool:
            self.ready = True
            return self.ready

        async def preprocess(self, payload, headers=None):
            if isinstance(payload, InferRequest):
                return Decoded(images_from_v2(payload), request=payload)
            if not isinstance(payload, dict):
                raise RequestError("the body is not a JSON object; send "
                                   f'{{"instances": [{EXPECTED_INSTANCE}]}} with Content-Type: application/json.',
                                   problem="not_json")
            return Decoded(images_from_instances(payload.get("instances")))

        async def predict(self, payload, headers=None):
            results = await self.batcher.submit(payload.images)
            for index, result in enumerate(results):
                if isinstance(result, Unreadable):
                    raise bad_instance(index, "not_an_image", f"cannot be decoded as an image ({result.reason}); "
                                                              "send a JPEG, PNG, GIF, BMP or WebP file.")
            payload.predictions = results
            return payload

        async def postprocess(self, result, headers=None, response_headers=None):
            predictions = result.predictions
            if result.request is None:
                return {"predictions": [p.as_dict() for p in predictions]}
            import numpy as np

            count, classes = len(predictions), len(card.class_names)
            tensors = {
                "probabilities": ("FP32", [count, classes], [p for r in predictions for p in r.probabilities]),
                "label": ("BYTES", [count], [r.label for r in predictions]),
                "score": ("FP32", [count], [r.score for r in predictions]),
                "class_index": ("INT32", [count],
                                [int(np.argmax(r.probabilities)) for r in predictions]),
            }
            outputs = [InferOutput(name, shape, datatype, data) for name, (datatype, shape, data) in tensors.items()]
            return InferResponse(result.request.id or "", card.name, outputs, model_version=card.version)

        def get_input_types(self):
            return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]

        def get_output_types(self):
            classes = len(card.class_names)
            return [{"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                    {"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "score", "datatype": "FP32", "shape": [-1]},
                    {"name": "class_index", "datatype": "INT32", "shape": [-1]}]

        def stop(self):
            self.batcher.close()
            if on_stop is not None:
                on_stop()
            self.ready = False

    return ImageClassifier()


