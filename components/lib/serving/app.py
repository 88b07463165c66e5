"""The server's ASGI app (KServe's v1/v2 endpoints and metrics, our page at ``/``, Vertex AI's
custom-container routes, the error shape, the body-size limit) and running it with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import zipfile

from tlp.components.lib import drift
from tlp.components.lib.drift_monitor import DriftMonitor
from tlp.components.lib.serving.kserve_model import import_kserve, make_model, metrics
from tlp.components.lib.serving.predictor import ModelCard, Predictor
from tlp.components.lib.serving.protocol import EXPECTED_INSTANCE, RequestError
from tlp.components.lib.settings import ServeOptions

PAGE_TEMPLATE = "page.html"


def render_page(card: ModelCard) -> str:
    import jinja2

    here = os.path.dirname(os.path.abspath(__file__))
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(here), autoescape=True)
    return environment.get_template(PAGE_TEMPLATE).render(
        card=card, classes_json=json.dumps(card.class_names), predict_url=f"/v1/models/{card.name}:predict",
    )


class CountingRequests:
    """Counts the HTTP requests being answered (``in_flight``: ``enter``/``leave``), so that the drift
    watch's worker computes only while the server answers none."""

    def __init__(self, app, in_flight):
        self.app, self.in_flight = app, in_flight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.in_flight.enter()
        try:
            return await self.app(scope, receive, send)
        finally:
            self.in_flight.leave()


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


def watch_drift(predictor: Predictor, options: ServeOptions) -> tuple[DriftMonitor | None, str]:
    """The server's drift watch, fed with the features of every answered image, or None and why
    not: turned off, no reference with the model, or one that does not fit it. A reference that
    cannot be used never stops the server: it serves, and says why drift is not watched."""
    if not options.drift_every:
        return None, "turned off (--drift-every 0)"
    if not drift.has_reference(predictor.model_dir):
        return None, ("the model carries no drift reference (exported before tlp recorded one); retrain it to "
                      "watch drift")
    if not predictor.features:
        return None, "this server was built without the features signature (Predictor(features=False))"
    if not predictor.image_size:
        return None, ("the model records no image size (model_info.json), so requests cannot be prepared as its "
                      "training photos were; retrain it to watch drift")
    try:
        reference = drift.load_reference(predictor.model_dir)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        return None, f"the model's drift reference cannot be read ({error}); retrain it to watch drift"
    width = predictor.feature_width
    rows, columns = reference.features.shape
    if rows < drift.MIN_PHOTOS or (width and columns != width):
        return None, (f"the model's drift reference ({rows} photos x {columns} features) does "
                      f"not fit it (at least {drift.MIN_PHOTOS} photos of the model's {width} features); retrain "
                      "it to watch drift")
    monitor = DriftMonitor(reference.features, capacity=options.drift_window, every=options.drift_every,
                           reference_photos=reference.photos, model_dir=predictor.model_dir,
                           image_size=predictor.image_size)
    predictor.on_images, predictor.drift_wanted = monitor.watch, monitor.wanted
    return monitor, ""


def drift_state(monitor: DriftMonitor | None, why_not: str = "") -> dict:
    """What ``GET /drift`` answers and the page shows."""
    if monitor is not None:
        return {"watching": True, **monitor.snapshot()}
    return {"watching": False, "auc": None, "why": why_not}


def create_app(predictor: Predictor, card: ModelCard, options: ServeOptions | None = None,
               drift_watch: tuple[DriftMonitor | None, str] | None = None):
    """The server's ASGI app: KServe's v1/v2 endpoints and metrics, plus our page, Vertex AI
    routes, error shape and body limit. ``options``: the declared serve options (default: their
    defaults); ``drift_watch``: what ``watch_drift`` gave (default: it is called here)."""
    options = options or ServeOptions()
    import_kserve()
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from kserve import errors
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import metrics_handler
    from kserve.protocol.rest.v1_endpoints import V1Endpoints, register_v1_endpoints
    from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

    monitor, why_not = drift_watch if drift_watch is not None else watch_drift(predictor, options)
    model = make_model(predictor, card, options, on_stop=monitor.close if monitor else None)
    repository = ModelRepository()
    repository.update(model)
    dataplane = DataPlane(model_registry=repository)
    extension = ModelRepositoryExtension(model_registry=repository)
    _, refused = metrics()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if monitor is not None:  # the server is stopping: end the drift worker, off the event loop
            await asyncio.to_thread(monitor.close)

    app = FastAPI(title=f"tlp serve: {card.name}", version=card.version, docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    page = render_page(card)
    app.add_api_route("/", lambda: HTMLResponse(page), methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", metrics_handler, methods=["GET"])
    app.add_api_route("/drift", lambda: JSONResponse(drift_state(monitor, why_not)), methods=["GET"])
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

    async def request_error(_request, error):  # a RequestError (registered for it below)
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
    limited = BodyLimit(app, int(options.max_body_mb * 1e6), lambda: refused.labels("body_too_large").inc())
    return CountingRequests(limited, monitor.requests) if monitor is not None else limited


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
