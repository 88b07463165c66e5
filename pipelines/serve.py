"""``tlp serve``: one model behind an HTTP inference server (KServe's Python model server).

This is the runner side of serving: it resolves ``NAME@champion`` / ``NAME/VERSION`` in a
registry or takes a model directory, reads Vertex AI's custom-container environment, and hands
plain values to ``components/lib/serving.py``, which builds and runs the server.

Vertex AI custom-container contract: when ``AIP_HTTP_PORT`` is set the server listens on
0.0.0.0 at that port; ``AIP_PREDICT_ROUTE`` and ``AIP_HEALTH_ROUTE`` are served besides the
KServe routes; without a MODEL argument the model is the one at ``AIP_STORAGE_URI`` (a ``gs://``
prefix Vertex AI copied the model's artifacts to, or a local directory).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

from tlp.components.lib import serving
from tlp.components.lib.registry import open_registry
from tlp.components.lib.registry.vertex_backend import download_prefix
from tlp.components.lib.specs import ConfigError
from tlp.pipelines import environment

DEFAULT_PORT = 8080
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class ServeConfig:
    model: str = ""  # a model directory, gs:// prefix, NAME@ALIAS or NAME/VERSION
    registry: str = ""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    name: str = ""  # the name in the routes (/v1/models/NAME:predict); default: the registered name or "model"
    max_batch: int = serving.DEFAULT_MAX_BATCH
    max_latency_ms: float = serving.DEFAULT_MAX_LATENCY_MS
    max_body_mb: float = serving.DEFAULT_MAX_BODY_MB
    predict_route: str = ""
    health_route: str = ""

    def options(self) -> serving.ServeOptions:
        return serving.ServeOptions(self.max_batch, self.max_latency_ms, self.max_body_mb,
                                    self.predict_route, self.health_route).check()


def apply_vertex_environment(config: ServeConfig, environ: dict | None = None) -> ServeConfig:
    """Applies Vertex AI's ``AIP_*`` variables (custom-container contract) over ``config``."""
    environ = environment.vertex_serving_variables() if environ is None else environ
    changes = {}
    port = environ.get("AIP_HTTP_PORT", "")
    if port:
        if not port.isdigit():
            raise ConfigError(f"AIP_HTTP_PORT={port!r} is not a port number.")
        # Vertex AI reaches the container from outside it: listen on every interface.
        changes.update(port=int(port), host="0.0.0.0")
    for key, variable in (("predict_route", "AIP_PREDICT_ROUTE"), ("health_route", "AIP_HEALTH_ROUTE")):
        if environ.get(variable):
            changes[key] = environ[variable]
    if not config.model and environ.get("AIP_STORAGE_URI"):
        changes["model"] = environ["AIP_STORAGE_URI"]
    return dataclasses.replace(config, **changes)


@dataclass(frozen=True)
class ResolvedModel:
    model_dir: str
    name: str
    version: str
    source: str


def resolve(model: str, registry_uri: str, name: str = "") -> ResolvedModel:
    """A model directory, a ``gs://`` prefix, or a registered version -> a local directory with
    the name and version to serve it under."""
    if not model:
        raise ConfigError("tlp serve needs a model: a model directory, NAME@champion or NAME/VERSION "
                          "(or AIP_STORAGE_URI, as Vertex AI sets it).")
    if name and not _NAME.fullmatch(name):
        raise ConfigError(f"--name {name!r} cannot be part of a URL path; use letters, digits, '.', '_' or '-'.")
    if os.path.isdir(model):
        return ResolvedModel(model, name, "", model)
    if model.startswith("gs://"):

        return ResolvedModel(download_prefix(model), name, "", model)
    if "@" not in model and "/" not in model:
        raise ConfigError(f"model {model!r} is neither a directory nor NAME@champion or NAME/VERSION; pass a model "
                          "directory or a registered version.")

    registry = open_registry(registry_uri)
    registered, at, alias = model.partition("@")
    if at:
        version = registry.champion_version(registered) if alias == "champion" else alias
        if version is None:
            raise ConfigError(f"model {registered!r} has no champion in {registry_uri}; pass NAME/VERSION.")
    else:
        registered, _, version = model.rpartition("/")
    model_dir = registry.model_dir(model)
    return ResolvedModel(model_dir, name or _url_safe(registered), str(version), f"{model} in {registry_uri}")


def _url_safe(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return safe or "model"


def prepare(config: ServeConfig):
    """Everything before listening: checks, model resolution and loading, a warm-up prediction.
    Returns (app, card)."""
    options = config.options()
    if not 0 < config.port < 65536:
        raise ConfigError(f"--port {config.port} is not a TCP port (1-65535).")
    resolved = resolve(config.model, config.registry, config.name)
    import tensorflow as tf

    try:
        predictor = serving.Predictor(resolved.model_dir)
        serving.warm_up(predictor)
    except (OSError, ValueError, KeyError, tf.errors.OpError) as error:
        raise ConfigError(f"{resolved.source} is not a model tlp can serve ({error}); pass the model directory "
                          "that fine-tuning exported (it holds saved_model.pb and model_info.json).") from error
    card = serving.load_card(resolved.model_dir, resolved.name, resolved.version, resolved.source)
    return serving.create_app(predictor, card, options), card


def banner(config: ServeConfig, card) -> str:
    base = f"http://{'127.0.0.1' if config.host == '0.0.0.0' else config.host}:{config.port}"
    lines = [
        f"tlp serve: {card.name} version {card.version} ({', '.join(card.class_names)}) from {card.source}",
        f"  page:     {base}/",
        f"  predict:  POST {base}/v1/models/{card.name}:predict   "
        '{"instances": [{"image_bytes": {"b64": "..."}}]}',
        f"  v2:       POST {base}/v2/models/{card.name}/infer",
        f"  health:   {base}/v2/health/ready   metrics: {base}/metrics",
        f"  batching: up to {config.max_batch} images within {config.max_latency_ms:g} ms; "
        f"bodies up to {config.max_body_mb:g} MB",
    ]
    if config.predict_route or config.health_route:
        lines.append(f"  Vertex AI routes: predict {config.predict_route or '-'}, health {config.health_route or '-'}")
    return "\n".join(lines)


def serve(config: ServeConfig, echo=print) -> None:
    """Resolves, loads and serves the model until interrupted."""
    app, card = prepare(config)
    echo(banner(config, card), flush=True)
    serving.run_server(app, config.host, config.port)
