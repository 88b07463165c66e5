"""``tlp serve``: one model behind an HTTP inference server (KServe's Python model server).

This is the runner side of serving: it resolves ``NAME@champion`` / ``NAME/VERSION`` in a
registry or takes a model directory, reads Vertex AI's custom-container environment, and hands
the declared serve options (``settings.ServeOptions``) to ``components/lib/serving/``, which
builds and runs the server.

Vertex AI custom-container contract: when ``AIP_HTTP_PORT`` is set the server listens on
0.0.0.0 at that port; ``AIP_PREDICT_ROUTE`` and ``AIP_HEALTH_ROUTE`` are served besides the
KServe routes; without a MODEL argument the model is the one at ``AIP_STORAGE_URI`` (a ``gs://``
prefix Vertex AI copied the model's artifacts to, or a local directory).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass

from tlp.components.lib import serving
from tlp.components.lib.options import add_flags, group_from_values
from tlp.components.lib.registry import open_registry
from tlp.components.lib.registry.vertex_backend import download_prefix
from tlp.components.lib.settings import ALL_GROUPS, ServeOptions
from tlp.components.lib.specs import ConfigError
from tlp.pipelines import console, environment
from tlp.pipelines.resolve import registry_or_default

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def apply_vertex_environment(options: ServeOptions, model: str = "",
                             environ: dict | None = None) -> tuple[ServeOptions, str]:
    """Applies Vertex AI's ``AIP_*`` variables (custom-container contract) over ``options`` and
    the model argument: (options, model)."""
    environ = environment.vertex_serving_variables() if environ is None else environ
    changes: dict = {}
    port = environ.get("AIP_HTTP_PORT", "")
    if port:
        if not port.isdigit():
            raise ConfigError(f"AIP_HTTP_PORT={port!r} is not a port number.")
        # Vertex AI reaches the container from outside it: listen on every interface.
        changes.update(port=int(port), host="0.0.0.0")
    for key, variable in (("predict_route", "AIP_PREDICT_ROUTE"), ("health_route", "AIP_HEALTH_ROUTE")):
        route = environ.get(variable)
        if route:
            if not route.startswith("/"):
                raise ConfigError(f"{variable}={route!r} is not a path; it must start with '/'.")
            changes[key] = route
    if not model and environ.get("AIP_STORAGE_URI"):
        model = environ["AIP_STORAGE_URI"]
    return dataclasses.replace(options, **changes), model


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

    registered, at, alias = model.partition("@")
    try:
        registry = open_registry(registry_uri)
        if at:
            version = registry.champion_version(registered) if alias == "champion" else alias
            if version is None:
                raise ConfigError(f"model {registered!r} has no champion in {registry_uri}; pass NAME/VERSION.")
        else:
            registered, _, version = model.rpartition("/")
        model_dir = registry.model_dir(model)
    except ImportError as error:  # the serving image holds no registry client (MLflow, Vertex AI SDK)
        if (error.name or "").split(".")[0] not in ("mlflow", "google"):
            raise  # something else is broken: not the serving image's doing
        raise ConfigError(f"{model} is a registered version, and this installation has no client for the registry "
                          f"({error.name or error}): the serving image serves a model directory or gs:// prefix "
                          "(Vertex AI passes AIP_STORAGE_URI); resolve NAME@champion with `tlp serve` where tlp "
                          "is fully installed.") from error
    return ResolvedModel(model_dir, name or _url_safe(registered), str(version), f"{model} in {registry_uri}")


def _url_safe(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return safe or "model"


def prepare(model: str, registry: str, options: ServeOptions):
    """Everything before listening: checks, model resolution and loading, a warm-up prediction,
    the drift watch. Returns (app, card, why drift is not watched: "" when it is)."""
    if not 0 < options.port < 65536:
        raise ConfigError(f"--port {options.port} is not a TCP port (1-65535).")
    resolved = resolve(model, registry, options.route_name)
    import tensorflow as tf

    try:
        predictor = serving.Predictor(resolved.model_dir, features=bool(options.drift_every))
        serving.warm_up(predictor)
    except (OSError, ValueError, KeyError, tf.errors.OpError) as error:
        raise ConfigError(f"{resolved.source} is not a model tlp can serve ({error}); pass the model directory "
                          "that fine-tuning exported (it holds saved_model.pb and model_info.json).") from error
    card = serving.load_card(resolved.model_dir, resolved.name, resolved.version, resolved.source)
    watch = serving.watch_drift(predictor, options)
    return serving.create_app(predictor, card, options, watch), card, watch[1]


def banner(options: ServeOptions, card, drift_not_watched: str = "") -> str:
    base = f"http://{'127.0.0.1' if options.host == '0.0.0.0' else options.host}:{options.port}"
    drift_line = drift_not_watched or (f"recomputed every {options.drift_every} images on the last "
                                       f"{options.drift_window}, off the request path: {base}/drift, gauge "
                                       "tlp_image_drift_auc")
    lines = [
        f"tlp serve: {card.name} version {card.version} ({', '.join(card.class_names)}) from {card.source}",
        f"  page:     {base}/",
        f"  predict:  POST {base}/v1/models/{card.name}:predict   "
        '{"instances": [{"image_bytes": {"b64": "..."}}]}',
        f"  v2:       POST {base}/v2/models/{card.name}/infer",
        f"  health:   {base}/v2/health/ready   metrics: {base}/metrics",
        f"  batching: up to {options.max_batch} images within {options.max_latency_ms:g} ms; "
        f"bodies up to {options.max_body_mb:g} MB",
        f"  drift:    {drift_line}",
    ]
    if options.predict_route or options.health_route:
        routes = f"predict {options.predict_route or '-'}, health {options.health_route or '-'}"
        lines.append(f"  Vertex AI routes: {routes}")
    return "\n".join(lines)


def serve(model: str, registry: str, options: ServeOptions, echo=print) -> None:
    """Resolves, loads and serves ``model`` (a directory, ``gs://`` prefix, NAME@ALIAS or
    NAME/VERSION in ``registry``) until interrupted."""
    app, card, drift_not_watched = prepare(model, registry, options)
    echo(banner(options, card, drift_not_watched), flush=True)
    serving.run_server(app, options.host, options.port)


# --- the command: `tlp serve` in the CLI, and `tlp-serve` (the serving image's entry point) ------

HELP = "serve a model over HTTP (KServe v1/v2 protocols, a page at /, image drift of the requests)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve command's arguments: the model, then every option declared for ``serve``."""
    parser.add_argument("model", nargs="?", default="",
                        help="a model directory, NAME@champion or NAME/VERSION in --registry (default: "
                             "$AIP_STORAGE_URI)")
    add_flags(parser, ALL_GROUPS, "serve")


def run(args: argparse.Namespace) -> int:
    options, model = apply_vertex_environment(group_from_values(ServeOptions, vars(args)), args.model)
    serve(model, registry_or_default(args.registry), options)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``tlp-serve``: ``tlp serve`` without the rest of tlp, so the serving image needs (and a
    replica imports) only TensorFlow, KServe and the serving code; the same arguments."""
    environment.quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="tlp-serve", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return console.exit_code(lambda: run(args), prog="tlp-serve", capture_native=True)
