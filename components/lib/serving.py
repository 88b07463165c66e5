"""Serving one exported model over HTTP, on the KServe Python model server.

The model is the SavedModel that fine-tuning exports (``model.export_servable``): its serving
signature takes encoded image bytes and returns probabilities, label, class index and score. This
module wraps it as a KServe model and builds the server's FastAPI app from KServe's own parts:
its v1 protocol (``POST /v1/models/NAME:predict``, TF-Serving shaped), the v2 Open Inference
Protocol (``/v2/models/NAME/infer``), health and readiness routes and Prometheus ``/metrics``.
What we add: the request body Vertex AI endpoints take (``{"instances": [{"image_bytes": {"b64":
...}}]}``), micro-batching of concurrent requests, a body-size limit, 4xx errors that name the
instance and the problem, Vertex AI's custom-container routes and a page at ``/``.

Nothing heavy is imported at module level: TensorFlow and KServe load when a server is built.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field

from tlp.components.lib import model as model_lib
from tlp.components.lib.registry import model_digest
from tlp.components.lib.specs import ConfigError

PAGE_TEMPLATE = "serving_page.html"
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_LATENCY_MS = 5.0
DEFAULT_MAX_BODY_MB = 32.0
INPUT_NAME = "image_bytes"
EXPECTED_INSTANCE = '{"image_bytes": {"b64": "<base64 of a JPEG, PNG, GIF, BMP or WebP file>"}}'


@dataclass(frozen=True)
class ServeOptions:
    """How the server batches and what it accepts. ``predict_route``/``health_route`` add
    Vertex AI's custom-container routes (``AIP_PREDICT_ROUTE``/``AIP_HEALTH_ROUTE``)."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_latency_ms: float = DEFAULT_MAX_LATENCY_MS
    max_body_mb: float = DEFAULT_MAX_BODY_MB
    predict_route: str = ""
    health_route: str = ""

    def check(self) -> ServeOptions:

        if self.max_batch < 1:
            raise ConfigError(f"--max-batch {self.max_batch}: use 1 or more (1 turns batching off).")
        if self.max_latency_ms < 0:
            raise ConfigError(f"--max-latency-ms {self.max_latency_ms:g}: use 0 or more milliseconds.")
        if self.max_body_mb <= 0:
            raise ConfigError(f"--max-body-mb {self.max_body_mb:g}: use a positive size in megabytes.")
        for flag, route in (("AIP_PREDICT_ROUTE", self.predict_route), ("AIP_HEALTH_ROUTE", self.health_route)):
            if route and not route.startswith("/"):
                raise ConfigError(f"{flag}={route!r} is not a path; it must start with '/'.")
        return self


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


class RequestError(Exception):
    """A request the server refuses: answered with ``status`` and a JSON error naming the
    instance (when one is to blame) and the problem."""

    def __init__(self, message: str, status: int = 400, index: int | None = None, problem: str = "bad_request"):
        super().__init__(message)
        self.message, self.status, self.index, self.problem = message, status, index, problem

    def as_json(self) -> dict:
        body = {"error": self.message, "problem": self.problem}
        if self.index is not None:
            body["instance"] = self.index
        return body


def bad_instance(index: int, problem: str, text: str) -> RequestError:
    return RequestError(f"instances[{index}]: {text}", 400, index, problem)


# --- decoding requests ------------------------------------------------------------------------


def images_from_instances(instances) -> list[bytes]:
    """Vertex AI's / TF Serving's body -> encoded image bytes, one per instance.

    Accepts ``{"image_bytes": {"b64": ...}}`` and the bare ``{"b64": ...}`` that Vertex AI batch
    prediction sends for each file of a file list. Anything else is refused, naming the instance."""
    if instances is None:
        raise RequestError(f'the body has no "instances"; send {{"instances": [{EXPECTED_INSTANCE}]}}.',
                           problem="missing_instances")
    if not isinstance(instances, list):
        raise RequestError(f'"instances" is a {type(instances).__name__}, not a list; send '
                           f'{{"instances": [{EXPECTED_INSTANCE}]}}.', problem="instances_not_a_list")
    if not instances:
        raise RequestError(f'"instances" is empty; send at least one {EXPECTED_INSTANCE}.',
                           problem="empty_instances")
    images = []
    for index, instance in enumerate(instances):
        if isinstance(instance, dict) and set(instance) == {"b64"}:
            value = instance
        elif isinstance(instance, dict) and INPUT_NAME in instance:
            value = instance[INPUT_NAME]
        else:
            what = f"has the keys {sorted(instance)}" if isinstance(instance, dict) else \
                f"is a {type(instance).__name__}"
            raise bad_instance(index, "wrong_key", f"{what}; expected {EXPECTED_INSTANCE}.")
        if not isinstance(value, dict) or not isinstance(value.get("b64"), str):
            raise bad_instance(index, "wrong_key", f'image_bytes must be {{"b64": "<base64 string>"}}; expected '
                                                   f"{EXPECTED_INSTANCE}.")
        images.append(_b64(value["b64"], index))
    return images


def _b64(text: str, index: int) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        # Browsers and some clients send URL-safe base64; accept it before giving up.
        try:
            data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise bad_instance(index, "not_base64", "image_bytes.b64 is not valid base64.") from None
    if not data:
        raise bad_instance(index, "empty_image", "image_bytes is empty (0 bytes).")
    return data


def images_from_v2(request) -> list[bytes]:
    """An Open Inference Protocol (v2) request -> encoded image bytes. The input is the BYTES
    tensor ``image_bytes``: raw bytes with the binary-data extension, base64 strings in JSON."""
    inputs = list(request.inputs or [])
    tensor = next((t for t in inputs if t.name == INPUT_NAME), inputs[0] if len(inputs) == 1 else None)
    if tensor is None:
        names = [t.name for t in inputs]
        raise RequestError(f"the request's inputs are {names}; send one BYTES input named {INPUT_NAME!r}.",
                           problem="wrong_key")
    if tensor.datatype != "BYTES":
        raise RequestError(f"input {tensor.name!r} is {tensor.datatype}; {INPUT_NAME!r} must be BYTES (encoded "
                           "image files).", problem="wrong_datatype")
    if getattr(tensor, "_raw_data", None) is not None:
        values = list(tensor.as_numpy().reshape(-1))
    else:
        values = list(_flatten(tensor.data or []))
    if not values:
        raise RequestError(f"input {INPUT_NAME!r} holds no images; send at least one.", problem="empty_instances")
    images = []
    for index, value in enumerate(values):
        if isinstance(value, str):
            images.append(_b64(value, index))
        elif isinstance(value, bytes) and value:
            images.append(value)
        else:
            raise bad_instance(index, "empty_image", "image_bytes is empty (0 bytes).")
    return images


def _flatten(values):
    for value in values:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


# --- the model --------------------------------------------------------------------------------


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

    def __init__(self, model_dir: str):

        self.model_dir = model_dir
        info = model_lib.read_info(model_dir)
        self.class_names = [str(name) for name in info["class_names"]]
        self.image_size = int(info.get("image_size") or 0)
        self.info = info
        self._serve = model_lib.load_servable(model_dir)
        self._lock = threading.Lock()  # one batch at a time: TensorFlow already uses every core

    def __call__(self, images: list[bytes]) -> list[Prediction | Unreadable]:
        import tensorflow as tf

        if not images:
            return []
        try:
            with self._lock:
                outputs = self._serve(image_bytes=tf.constant(images))
        except tf.errors.InvalidArgumentError as error:
            if len(images) == 1:  # the signature's own error is about its graph; decoding alone says why
                return [Unreadable(decode_problem(images[0]) or clean_tf_error(error.message))]
            return self._without_unreadable(images)
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


class MicroBatcher:
    """Collects images from concurrent requests into batches of up to ``max_batch``, waiting at
    most ``max_latency_ms`` after the first one for more, and runs one batch at a time on a
    worker thread (the event loop keeps accepting requests meanwhile)."""

    def __init__(self, predict, max_batch: int, max_latency_ms: float, observe_batch=None):
        self._predict = predict
        self.max_batch = max_batch
        self.max_latency = max_latency_ms / 1000.0
        self._observe = observe_batch or (lambda size: None)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlp-predict")

    async def submit(self, images: list[bytes]) -> list[Prediction | Unreadable]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run())
        futures = []
        for image in images:
            future = loop.create_future()
            self._queue.put_nowait((image, future))
            futures.append(future)
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_latency
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [(image, future) for image, future in batch if not future.cancelled()]
            if not live:
                continue
            self._observe(len(live))
            try:
                results = await loop.run_in_executor(self._executor, self._predict, [image for image, _ in live])
            except Exception as error:  # answer every waiting request instead of leaving it hanging
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _import_kserve():
    """KServe parses ``sys.argv`` when imported (kserve.model_server); keep our options away from it."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve
    finally:
        sys.argv = saved
    return kserve


def _metrics():
    """Prometheus metrics of our own (KServe adds its per-step latency histograms)."""
    from prometheus_client import REGISTRY, Counter, Histogram

    existing = getattr(_metrics, "cached", None)
    if existing is None:
        names = REGISTRY._names_to_collectors  # one process may build several apps (tests): register once
        batch = names.get("tlp_batch_size") or Histogram(
            "tlp_batch_size", "Images per batch run by the model", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        refused = names.get("tlp_refused_requests") or Counter(
            "tlp_refused_requests", "Requests refused with a 4xx, by problem", ["problem"])
        existing = _metrics.cached = (batch, refused)
    return existing


def make_model(predictor: Predictor, card: ModelCard, options: ServeOptions):
    """The KServe model: decodes v1/v2 requests, batches, answers Vertex AI's prediction shape."""
    kserve = _import_kserve()
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    batch_histogram, _ = _metrics()

    @dataclass
    class Decoded:
        images: list[bytes]
        request: object = None  # the v2 InferRequest, if it came that way
        predictions: list = field(default_factory=list)

    class ImageClassifier(kserve.Model):
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
            self.ready = False

    return ImageClassifier()


# --- the app ----------------------------------------------------------------------------------


def render_page(card: ModelCard) -> str:
    import jinja2

    here = os.path.dirname(os.path.abspath(__file__))
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(here), autoescape=True)
    return environment.get_template(PAGE_TEMPLATE).render(
        card=card, classes_json=json.dumps(card.class_names), predict_url=f"/v1/models/{card.name}:predict",
    )


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413 before they reach the model: by
    Content-Length when the client sends one, otherwise while the body streams in."""

    def __init__(self, app, limit: int, on_refused=None):
        self.app, self.limit, self._on_refused = app, limit, on_refused or (lambda: None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._drain(receive, int(length))
            return await self._refuse(int(length), send)
        if length is not None:
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:  # no Content-Length (chunked): read it here, up to the limit
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(size, send, at_least=True)
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _drain(self, receive, length: int) -> None:
        """Reads a refused body (up to 4x the limit) before answering: a client still sending
        would otherwise see a broken pipe instead of the 413 and its reason."""
        if length > 4 * self.limit:
            return
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    async def _refuse(self, size: int, send, at_least: bool = False):
        self._on_refused()
        limit_mb = self.limit / 1e6
        text = f"the request body is {'over ' if at_least else ''}{size / 1e6:.1f} MB, more than the server's limit " \
               f"of {limit_mb:g} MB (tlp serve --max-body-mb); send fewer or smaller images per request."
        body = json.dumps({"error": text, "problem": "body_too_large"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def create_app(predictor: Predictor, card: ModelCard, options: ServeOptions = ServeOptions()):
    """The server's ASGI app: KServe's v1/v2 endpoints and metrics, plus our page, Vertex AI
    routes, error shape and body limit."""
    _import_kserve()
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from kserve import errors
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import metrics_handler
    from kserve.protocol.rest.v1_endpoints import V1Endpoints, register_v1_endpoints
    from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

    options = options.check()
    model = make_model(predictor, card, options)
    repository = ModelRepository()
    repository.update(model)
    dataplane = DataPlane(model_registry=repository)
    extension = ModelRepositoryExtension(model_registry=repository)
    _, refused = _metrics()

    app = FastAPI(title=f"tlp serve: {card.name}", version=card.version, docs_url=None, redoc_url=None)
    page = render_page(card)
    app.add_api_route("/", lambda: HTMLResponse(page), methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", metrics_handler, methods=["GET"])
    register_v1_endpoints(app, dataplane, extension)
    register_v2_endpoints(app, dataplane, extension)
    v1 = V1Endpoints(dataplane, extension)

    if options.predict_route:
        async def vertex_predict(request):
            return await v1.predict(card.name, request)

        # The class itself, not the postponed string annotation: FastAPI resolves annotations in
        # the module's globals, where Request (imported here, when an app is built) is not.
        vertex_predict.__annotations__ = {"request": Request}

        app.add_api_route(options.predict_route, vertex_predict, methods=["POST"], response_model=None)
    if options.health_route:
        async def vertex_health():
            ready = await dataplane.model_ready(card.name)
            return JSONResponse({"name": card.name, "ready": ready}, status_code=200 if ready else 503)

        app.add_api_route(options.health_route, vertex_health, methods=["GET"])

    async def request_error(_request, error: RequestError):
        refused.labels(error.problem).inc()
        return JSONResponse(error.as_json(), status_code=error.status)

    async def invalid_input(_request, error):  # KServe's own 400s (e.g. a body that is not JSON)
        refused.labels("not_json").inc()
        return JSONResponse({"error": f"the body is not valid JSON ({error}); send "
                                      f'{{"instances": [{EXPECTED_INSTANCE}]}}.', "problem": "not_json"},
                            status_code=400)

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(errors.InvalidInput, invalid_input)
    app.add_exception_handler(errors.InferenceError, errors.inference_error_handler)
    app.add_exception_handler(errors.ModelNotFound, errors.model_not_found_handler)
    app.add_exception_handler(errors.ModelNotReady, errors.model_not_ready_handler)
    app.add_exception_handler(NotImplementedError, errors.not_implemented_error_handler)
    app.add_exception_handler(errors.ServerNotLive, errors.server_not_live_handler)
    app.add_exception_handler(errors.ServerNotReady, errors.server_not_ready_handler)
    app.add_exception_handler(Exception, errors.generic_exception_handler)
    app.state.model = model
    return BodyLimit(app, int(options.max_body_mb * 1e6), lambda: refused.labels("body_too_large").inc())


def uvicorn_config(app, host: str, port: int, log_level: str = "info"):
    import uvicorn

    # httptools and uvloop (in the lock through uvicorn[standard], as KServe installs it): parsing a
    # 32-image body (~1 MB of JSON) is the server's one single-threaded step per request.
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http="httptools", loop="uvloop",
                          timeout_keep_alive=65, timeout_graceful_shutdown=30)


def run_server(app, host: str, port: int, log_level: str = "info") -> None:
    """Serves until interrupted (SIGINT/SIGTERM end it gracefully)."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, host, port, log_level)).run()


@contextlib.contextmanager
def running_in_thread(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0):
    """Serves ``app`` on a background thread of this process; yields its base URL."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn_config(app, host, sock.getsockname()[1], "warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tlp-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# --- a server in its own process --------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, model_name: str, process=None, timeout: float = 180.0) -> None:
    """Polls the model's readiness route until it answers 200; raises RuntimeError with the
    reason if the process ends first or the time runs out."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/v1/models/{model_name}", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} was not ready after {timeout:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def server_process(command: list[str], url: str, model_name: str, log_path: str, timeout: float = 180.0,
                   env: dict | None = None):
    """Runs a server command (e.g. ``tlp serve DIR --port P``), waits until its model is ready,
    yields the ``subprocess.Popen``; stops it with SIGTERM (then SIGKILL) afterwards. Output goes
    to ``log_path``."""
    import subprocess

    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_ready(url, model_name, process, timeout)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:]).strip()
    except OSError:
        return ""


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
        raise RuntimeError(f"the model cannot classify a blank test image: {result.reason}")


def main(argv: list[str] | None = None) -> int:
    """``python -m tlp.components.lib.serving MODEL_DIR --port P [...]``: serves an exported model
    directory with explicit options only (no registry, no environment); what infra validation
    starts. ``tlp serve`` is the user-facing command."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tlp.components.lib.serving")
    parser.add_argument("model_dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="")
    parser.add_argument("--version", default="")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    parser.add_argument("--max-latency-ms", type=float, default=DEFAULT_MAX_LATENCY_MS)
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB)
    args = parser.parse_args(argv)
    options = ServeOptions(args.max_batch, args.max_latency_ms, args.max_body_mb).check()
    predictor = Predictor(args.model_dir)
    warm_up(predictor)
    card = load_card(args.model_dir, args.name, args.version)
    run_server(create_app(predictor, card, options), args.host, args.port, "warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
