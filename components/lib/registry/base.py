"""What every model registry offers (MLflow and Vertex AI alike), and what both share.

Registration, champion/challenger and ``tlp predict`` talk to a registry only through the
``Registry`` protocol, so they read the same for both."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Protocol

CHAMPION_ALIAS = "champion"


@dataclass
class Registered:
    registry: str
    name: str
    version: str
    champion: bool
    existing: bool = False  # the same model artifact was registered before
    reason: str = ""  # why it is or is not the champion
    infra_validation: dict | None = None  # the candidate served once before it could be promoted


class Registry(Protocol):
    uri: str
    default_name: str  # a model name fixed by the URI (vertex://P/R/MODEL), else ""

    def lock(self) -> contextlib.AbstractContextManager: ...

    def register(self, model_dir: str, name: str, *, metrics: dict, params: dict, tags: dict) -> Registered:
        """Adds ``model_dir`` as a new version of ``name`` (once: the same bytes give the same version
        back with ``existing=True``). Does not touch the champion alias."""

    def champion_version(self, name: str) -> str | None: ...

    def set_champion(self, name: str, version: str) -> None: ...

    def record_decision(self, name: str, version: str, reason: str) -> None: ...

    def model_dir(self, reference: str) -> str:
        """``NAME/VERSION`` or ``NAME@ALIAS`` -> a local directory holding that version's model."""


def model_digest(model_dir: str) -> str:
    """Content hash of a model directory (file names and bytes), for idempotent registration."""
    digest = hashlib.sha256()
    for directory, subdirs, names in sorted(os.walk(model_dir)):
        subdirs.sort()
        for name in sorted(names):
            path = os.path.join(directory, name)
            digest.update(os.path.relpath(path, model_dir).encode())
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()
