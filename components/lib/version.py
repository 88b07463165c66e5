"""The project's version, as installed (used for image tags and registry lineage)."""

from __future__ import annotations

from importlib import metadata


def project_version() -> str:
    try:
        return metadata.version("tlp")
    except metadata.PackageNotFoundError:
        return "0.0.0"
