"""Where each component runs: one image setting, resolved when the pipeline is compiled."""

from __future__ import annotations

from tlp.components.lib.version import DEFAULT_REPO, image_reference, project_version

__all__ = ["DEFAULT_REPO", "image_reference", "project_version"]
