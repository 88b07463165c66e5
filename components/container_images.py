"""Where each component runs: one image setting, resolved when the pipeline is compiled."""

from __future__ import annotations

from tlp.components.lib.version import project_version

DEFAULT_REPO = "tlp"


def image_reference(repo: str = DEFAULT_REPO, tag: str | None = None, kind: str = "light") -> str:
    """``REPO/tlp-train:TAG`` (training steps) or ``REPO/tlp:TAG`` (everything else)."""
    name = "tlp-train" if kind == "train" else "tlp"
    return f"{repo.rstrip('/')}/{name}:{tag or project_version()}"
