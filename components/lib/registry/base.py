"""What every model registry offers (MLflow and Vertex AI alike), and what both share.

Registration, champion/challenger, the data checks, ``tlp models`` and ``tlp predict`` talk to a
registry only through the ``Registry`` protocol, so they read the same for both."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Protocol

from tlp.components.lib.specs import NotFound

CHAMPION_ALIAS = "champion"


@dataclass
class Registered:
    registry: str
    name: str
    version: str
    champion: bool
    existing: bool = False  # the same model artifact was registered before
    reason: str = ""  # why it is or is not the champion
    promote_command: str = ""  # when a person has to decide: the exact command that promotes it
    infra_validation: dict | None = None  # the candidate served once before it could be promoted


@dataclass
class ModelVersion:
    """One registered version, as ``tlp models`` shows it: everything recorded on it."""

    name: str
    version: str
    created: str  # ISO 8601, UTC
    aliases: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # lineage, decisions, promotions
    params: dict[str, str] = field(default_factory=dict)  # training options (``show`` only)

    @property
    def champion(self) -> bool:
        return CHAMPION_ALIAS in self.aliases

    def recorded(self, key: str, default=None):
        """A tag holding JSON (class names, counts), decoded; ``default`` if absent or unreadable."""
        try:
            return json.loads(self.tags[key])
        except (KeyError, TypeError, ValueError):
            return default

    @property
    def total_images(self) -> int | None:
        counts = self.recorded("data_counts")
        return sum(counts.values()) if isinstance(counts, dict) else None


class Registry(Protocol):
    uri: str
    default_name: str  # a model name fixed by the URI (vertex://P/R/MODEL), else ""

    def lock(self) -> contextlib.AbstractContextManager: ...

    def register(self, model_dir: str, name: str, *, metrics: dict, params: dict, tags: dict) -> Registered:
        """Adds ``model_dir`` as a new version of ``name`` (once: the same bytes give the same version
        back with ``existing=True``). Does not touch the champion alias."""

    def champion_version(self, name: str) -> str | None: ...

    def set_champion(self, name: str, version: str) -> None: ...

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Records ``tags`` on the version (merged with what it holds)."""

    def attach_files(self, name: str, version: str, directory: str, files: list[str], *, artifact_path: str,
                     metrics: dict[str, float], tags: dict[str, str]) -> str:
        """Records ``files`` of ``directory`` (e.g. the LiteRT variants) with the version, with their
        metrics and tags. Returns where the files are now kept."""

    def model_names(self) -> list[str]: ...

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first; ``NotFound`` for an unknown model."""

    def version(self, name: str, version: str) -> ModelVersion:
        """One version with everything recorded on it; ``NotFound`` if it does not exist."""

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


def unknown_version(name: str, version: str, uri: str, versions: list[ModelVersion]) -> NotFound:
    listed = ", ".join(v.version for v in versions) or "none"
    return NotFound(f"model {name!r} has no version {version!r} in the registry {uri}; its versions: {listed}.")


def unknown_model(name: str, uri: str, known: list[str]) -> NotFound:
    listed = ", ".join(sorted(known)[:20]) or "none"
    return NotFound(f"no model {name!r} in the registry {uri}; models there: {listed}.")
