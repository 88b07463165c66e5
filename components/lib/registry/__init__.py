"""Model registries, chosen by URI.

- ``sqlite:///path/registry.db`` (the local default), or any MLflow tracking URI
  (``http://mlflow:5000``...): an MLflow Model Registry (``mlflow_backend``). With SQLite it
  is embedded: no server.
- ``vertex://PROJECT/REGION[/MODEL]``: the Vertex AI Model Registry (``vertex_backend``).

Both implement ``base.Registry``; ``champion`` holds registration, champion/challenger, promotion
and rollback.
"""

from __future__ import annotations

from tlp.components.lib.registry.base import CHAMPION_ALIAS, ModelVersion, Registered, Registry, model_digest
from tlp.components.lib.registry.mlflow_backend import MlflowRegistry
from tlp.components.lib.registry.vertex_backend import VertexRegistry
from tlp.components.lib.specs import VERTEX_SCHEME

__all__ = ["CHAMPION_ALIAS", "MlflowRegistry", "ModelVersion", "Registered", "Registry", "VertexRegistry",
           "model_digest", "open_registry"]


def open_registry(uri: str) -> Registry:
    """The registry behind ``uri``: Vertex AI for vertex://, MLflow otherwise."""
    if uri.startswith(VERTEX_SCHEME):
        return VertexRegistry(uri)
    return MlflowRegistry(uri)
