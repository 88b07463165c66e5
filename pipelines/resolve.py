"""Turning what the user asked for into what a run can use: ``auto`` data and weights, the
default registry. Each decision comes with a note, printed in the banner and the summary."""

from __future__ import annotations

import dataclasses
import os

from tlp.components.lib import specs
from tlp.components.lib.settings import ImageOptions, LocalRunOptions, Settings
from tlp.components.lib.version import DEFAULT_REPO, image_reference
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


def resolve_cloud(settings: Settings, project: str, region: str, api_endpoint: str, on_vertex: bool,
                  images: ImageOptions | None = None):
    """In the cloud ``auto`` means the tutorial's data and ImageNet weights (the cloud has the
    network), and the registry defaults to the Vertex AI Model Registry of the run's project.
    A Vertex AI registry serves each version from the run's own image repository (``images``)
    unless its URI names another."""
    notes, changes = [], {}
    if settings.data.data == "auto":
        changes["data"] = specs.DEFAULT_DATA
        notes.append(f"--data auto -> {specs.DEFAULT_DATA}")
    if settings.model.weights == "auto":
        changes["weights"] = "imagenet"
        notes.append("--weights auto -> imagenet")
    registry = settings.registry.registry
    if registry in ("", "vertex"):
        if not on_vertex:
            raise specs.ConfigError(
                "a --kfp-host run needs --registry: an MLflow server URL or vertex://PROJECT/REGION."
            )
        registry = f"vertex://{project}/{region}" + (f"?api_endpoint={api_endpoint}" if api_endpoint else "")
    if registry.startswith(specs.VERTEX_SCHEME):
        registry, note = with_serving_image(registry, images or ImageOptions())
        notes += [note] if note else []
    if registry != settings.registry.registry:
        changes["registry"] = registry
    return (settings.replace(**changes) if changes else settings), notes


def with_serving_image(registry: str, images: ImageOptions) -> tuple[str, str]:
    """A Vertex AI registry URI that serves from the run's images: the steps run from
    ``--image-repo``/``--image-tag``, and the serving image was built and pushed beside them, so
    without this each version would name ``tlp/tlp-serve:VERSION``, which Vertex AI cannot pull.
    A URI that names its own ``image_repo`` or ``serving_image`` is kept. Returns the URI and a
    note (empty when nothing changed)."""
    location = specs.parse_vertex_uri(registry)
    if {"image_repo", "serving_image"} & set(location.options):
        return registry, ""
    if images.image_repo.rstrip("/") == DEFAULT_REPO and not images.image_tag:
        return registry, ""  # the local default: registration's own note says to name a repository
    if images.image_tag:  # the registry adds the project version; another tag needs the whole reference
        option = {"serving_image": image_reference(images.image_repo, images.image_tag, kind="serve")}
    else:
        option = {"image_repo": images.image_repo.rstrip("/")}
    chosen = str(dataclasses.replace(location, options={**location.options, **option}))
    served = option.get("serving_image") or image_reference(images.image_repo, None, kind="serve")
    return chosen, f"serving image -> {served} (the run's image repository)"
