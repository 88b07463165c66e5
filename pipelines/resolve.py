"""Turning what the user asked for into what a run can use: ``auto`` data and weights, the
default registry. Each decision comes with a note, printed in the banner and the summary."""

from __future__ import annotations

import os

from tlp.components.lib import specs
from tlp.components.lib.settings import LocalRunOptions, Settings
from tlp.pipelines import environment


def default_registry(output_dir: str) -> str:
    """The local MLflow registry of a run: a SQLite file beside the runs."""
    return "sqlite:///" + os.path.join(os.path.abspath(output_dir), "registry.db")


def registry_or_default(registry: str) -> str:
    """``--registry`` as given, or the local registry under the default output directory."""
    return registry or default_registry(LocalRunOptions().output_dir)


def resolve_local(settings: Settings, output_dir: str, probe=environment.reachable) -> tuple[Settings, list[str]]:
    """``auto`` data/weights become what can actually be used on this machine, with a note why;
    an empty registry becomes the local one under ``output_dir``."""
    notes, changes = [], {}
    if settings.data.data == "auto":
        name = specs.DEFAULT_DATA.split(":", 1)[1]
        if environment.tfds_cached(name):
            data, why = specs.DEFAULT_DATA, "found in the TFDS cache"
        elif probe(*environment.TFDS_HOSTS[name]):
            data, why = specs.DEFAULT_DATA, "download host reachable"
        else:
            data, why = "sample", f"{specs.DEFAULT_DATA} is neither cached nor reachable (offline)"
        changes["data"] = data
        notes.append(f"--data auto -> {data} ({why})")
    if settings.model.weights == "auto":
        model = settings.model
        if environment.imagenet_weights_cached(model.base, model.alpha, model.image_size):
            weights, why = "imagenet", "found in the Keras cache"
        elif probe(*environment.WEIGHTS_HOST):
            weights, why = "imagenet", "download host reachable"
        else:
            weights, why = "none", "ImageNet weights neither cached nor reachable (offline): random weights"
        changes["weights"] = weights
        notes.append(f"--weights auto -> {weights} ({why})")
    if not settings.registry.registry:
        changes["registry"] = default_registry(output_dir)
    return (settings.replace(**changes) if changes else settings), notes


def resolve_cloud(settings: Settings, project: str, region: str, api_endpoint: str, on_vertex: bool):
    """In the cloud ``auto`` means the tutorial's data and ImageNet weights (the cloud has the
    network), and the registry defaults to the Vertex AI Model Registry of the run's project."""
    notes, changes = [], {}
    if settings.data.data == "auto":
        changes["data"] = specs.DEFAULT_DATA
        notes.append(f"--data auto -> {specs.DEFAULT_DATA}")
    if settings.model.weights == "auto":
        changes["weights"] = "imagenet"
        notes.append("--weights auto -> imagenet")
    if settings.registry.registry in ("", "vertex"):
        if not on_vertex:
            raise specs.ConfigError(
                "a --kfp-host run needs --registry: an MLflow server URL or vertex://PROJECT/REGION."
            )
        registry = f"vertex://{project}/{region}"
        changes["registry"] = registry + (f"?api_endpoint={api_endpoint}" if api_endpoint else "")
    return (settings.replace(**changes) if changes else settings), notes
