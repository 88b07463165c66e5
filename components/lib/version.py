"""The project's version, and the container images tagged with it."""

from __future__ import annotations

from importlib import metadata

DEFAULT_REPO = "tlp"
# The image of each kind: training steps (TensorFlow with CUDA), everything else, the server.
IMAGE_NAMES = {"train": "tlp-train", "light": "tlp", "serve": "tlp-serve", "dataflow": "tlp-dataflow"}


def project_version() -> str:
    try:
        return metadata.version("tlp")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def image_reference(repo: str = DEFAULT_REPO, tag: str | None = None, kind: str = "light") -> str:
    """``REPO/tlp-train:TAG``, ``REPO/tlp:TAG`` or ``REPO/tlp-serve:TAG``."""
    return f"{repo.rstrip('/')}/{IMAGE_NAMES[kind]}:{tag or project_version()}"
