"""Model registries, chosen by URI.

- ``sqlite:///path/registry.db`` (the local default), or any MLflow tracking URI
  (``http://mlflow:5000``...): an MLflow Model Registry. With SQLite it is embedded: no server.
- ``vertex://PROJECT/REGION[/MODEL]``: the Vertex AI Model Registry (``vertex_registry.py``).

Every registered version carries the metrics, the training parameters, the data spec and
fingerprint, the weights spec and the code version, so any version can be traced.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass

from tlp.components.lib.specs import ConfigError

CHAMPION_ALIAS = "champion"
EXPERIMENT = "transfer-learning"


@dataclass
class Registered:
    registry: str
    name: str
    version: str
    champion: bool
    existing: bool = False  # the same model artifact was registered before
    reason: str = ""  # why it is or is not the champion

    def as_dict(self) -> dict:
        return {
            "registry": self.registry,
            "name": self.name,
            "version": self.version,
            "champion": self.champion,
            "existing": self.existing,
            "reason": self.reason,
        }


def check_registry_uri(uri: str) -> str:
    """Validates a registry URI early (before any training). Returns it normalised."""
    if uri == "vertex":
        raise ConfigError(
            "--registry vertex needs a project and region, which only a cloud run (tlp submit) knows; "
            "here write vertex://PROJECT/REGION[/MODEL]."
        )
    if uri.startswith("vertex://"):
        from tlp.components.lib.vertex_registry import parse_vertex_uri

        return str(parse_vertex_uri(uri))
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return "sqlite:///" + os.path.abspath(path)
    if uri.startswith(("http://", "https://", "databricks")):
        from urllib.parse import urlsplit

        if urlsplit(uri).password or urlsplit(uri).username:
            # A URI is a pipeline parameter: it would land in logs and compiled pipelines.
            raise ConfigError(
                "--registry holds credentials in its URI; remove them and set "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead."
            )
        return uri
    raise ConfigError(
        f"--registry {uri!r} is not a registry URI I know; use sqlite:///PATH.db (local MLflow "
        "registry), http(s)://HOST (an MLflow server) or vertex://PROJECT/REGION[/MODEL] (Vertex AI)."
    )


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


def _retrying(action, attempts: int = 20):
    """SQLite allows one writer at a time: a racing registration sees "database is locked"
    (or a half-created schema) and simply tries again after a short random pause."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:  # MlflowException or SQLAlchemy's OperationalError
            transient = any(
                text in str(error).lower()
                for text in ("database is locked", "already exists", "unique constraint", "no such table")
            )
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.2, 1.0))


class MlflowRegistry:
    default_name = ""  # the model name comes from the run, not the URI

    def __init__(self, uri: str):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = check_registry_uri(uri)
        self._lock_path = None
        if self.uri.startswith("sqlite:///"):
            database = self.uri[len("sqlite:///"):]
            os.makedirs(os.path.dirname(database), exist_ok=True)
            self._lock_path = database + ".lock"
        with self.lock():  # two processes creating the schema at once corrupt its migrations
            self.client = _retrying(lambda: MlflowClient(tracking_uri=self.uri, registry_uri=self.uri))
            _retrying(lambda: self.client.search_registered_models(max_results=1))
        self._mlflow = mlflow

    @contextlib.contextmanager
    def lock(self):
        """Serialises writers of a SQLite registry across processes (a no-op for servers)."""
        if self._lock_path is None:
            yield
            return
        with open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            # Keep artifacts beside the database, not in whatever directory we run from.
            root = os.path.join(os.path.dirname(self.uri[len("sqlite:///"):]), "artifacts")
            location = "file://" + root
        return self.client.create_experiment(EXPERIMENT, artifact_location=location)

    def register(
        self,
        model_dir: str,
        name: str,
        *,
        metrics: dict[str, float],
        params: dict[str, str],
        tags: dict[str, str],
    ) -> Registered:
        """Adds ``model_dir`` as a new version of ``name`` (once: the same bytes give the same
        version back, ``existing=True``). Does not touch the champion alias."""
        digest = model_digest(model_dir)
        with self.lock():
            return self._register_locked(model_dir, name, digest, metrics, params, tags)

    def _register_locked(self, model_dir, name, digest, metrics, params, tags) -> Registered:
        _retrying(lambda: self._ensure_model(name))
        existing = self._version_with_digest(name, digest)
        if existing is not None:
            return Registered(self.uri, name, existing, self.champion_version(name) == existing, existing=True)

        from mlflow.entities import Metric, Param, RunTag

        run = _retrying(lambda: self.client.create_run(_retrying(self._experiment_id), tags={"mlflow.runName": name}))
        run_id = run.info.run_id
        _retrying(lambda: self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        ))
        self.client.log_artifacts(run_id, model_dir, "model")
        _retrying(lambda: self.client.set_terminated(run_id))
        version_tags = {**{k: str(v) for k, v in tags.items()}, "model_digest": digest}
        version_tags.update({f"metric.{k}": f"{float(v):.6f}" for k, v in metrics.items()})
        version = _retrying(lambda: self.client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=version_tags
        ))
        return Registered(self.uri, name, str(version.version), False)

    def _ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
                raise

    def _version_with_digest(self, name: str, digest: str) -> str | None:
        versions = _retrying(lambda: self.client.search_model_versions(f"name = '{name}'"))
        for version in versions:
            if version.tags.get("model_digest") == digest:
                return str(version.version)
        return None

    def champion_version(self, name: str) -> str | None:
        version = _retrying(lambda: self.client.get_registered_model(name)).aliases.get(CHAMPION_ALIAS)
        return None if version is None else str(version)

    def set_champion(self, name: str, version: str) -> None:
        _retrying(lambda: self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version))

    def record_decision(self, name: str, version: str, promoted: bool, reason: str) -> None:
        del promoted  # the alias says it; the tag says why
        _retrying(lambda: self.client.set_model_version_tag(name, version, "champion_decision", reason))

    def model_dir(self, reference: str) -> str:
        """``NAME/VERSION``, ``NAME@ALIAS`` or ``models:/...`` -> a local model directory."""
        from mlflow.exceptions import MlflowException

        ref = reference[len("models:/"):] if reference.startswith("models:/") else reference
        try:
            if "@" in ref:
                name, alias = ref.split("@", 1)
                version = self.client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = ref.rpartition("/")
                version = self.client.get_model_version(name, number)
        except MlflowException as error:
            raise ConfigError(
                f"model {reference!r} is not in the registry {self.uri}; use NAME/VERSION or "
                "NAME@champion of a registered model, or a model directory."
            ) from error
        return self._mlflow.artifacts.download_artifacts(
            artifact_uri=version.source, tracking_uri=self.uri
        )


def open_registry(uri: str):
    """The registry behind ``uri``: Vertex AI for vertex://, MLflow otherwise."""
    if uri.startswith("vertex://"):
        from tlp.components.lib.vertex_registry import VertexRegistry

        return VertexRegistry(uri)
    return MlflowRegistry(uri)


def challenge(
    registry, name: str, candidate_version: str, candidate_accuracy: float,
    dataset_dir: str, tolerance: float,
) -> tuple[bool, str]:
    """Champion/challenger: the candidate takes the ``champion`` alias only if its test accuracy
    is at least the champion's on the *same* (current) test split, minus ``tolerance``."""
    from tlp.components.lib.evaluation import evaluate_model

    champion = registry.champion_version(name)
    if champion is None:
        return True, "first version of the model: it becomes the champion"
    if champion == candidate_version:
        return True, "already the champion"
    try:
        scored = evaluate_model(registry.model_dir(f"{name}/{champion}"), dataset_dir, splits=("test",))
    except ValueError as error:  # e.g. the champion knows other classes
        return False, f"champion version {champion} cannot be scored on this test split ({error}); it stays"
    champion_accuracy = scored["test"]["accuracy"]
    promote = candidate_accuracy >= champion_accuracy - tolerance
    verdict = "takes over as champion" if promote else f"stays behind champion version {champion}"
    return promote, (
        f"test accuracy {candidate_accuracy:.4f} vs champion version {champion} at "
        f"{champion_accuracy:.4f} on the same test split (tolerance {tolerance:g}): {verdict}"
    )


def register_model(
    model_dir: str, dataset_dir: str, metrics: dict, registry_uri: str, model_name: str = "",
    champion_tolerance: float = 0.0,
) -> Registered:
    """The registration step: gathers lineage from the model and data set, registers a new
    version, then lets it challenge the champion."""
    from tlp.components.container_images import project_version
    from tlp.components.lib import images
    from tlp.components.lib import model as model_lib
    from tlp.components.lib.specs import parse_data_spec

    info = model_lib.read_info(model_dir)
    data = images.read_metadata(dataset_dir)
    registry = open_registry(registry_uri)
    name = registry.default_name or model_name or parse_data_spec(data["source"]).short_name
    params = {
        key: info[key]
        for key in ("base", "alpha", "weights", "image_size", "dropout", "learning_rate",
                    "fine_tune_at", "fine_tune_learning_rate", "epochs_done", "replicas")
        if key in info
    }
    tags = {
        "data_spec": data["source"],
        "data_fingerprint": data["fingerprint"],
        "data_counts": json.dumps(data["num_examples"]),
        "class_names": json.dumps(info["class_names"]),
        "weights_spec": info["weights"],
        "code_version": project_version(),
    }
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    registered = registry.register(model_dir, name, metrics=numeric, params=params, tags=tags)
    if registered.existing:
        registered.reason = "this model artifact was registered before: same version, nothing changed"
    else:
        with registry.lock():  # one challenger at a time
            promote, registered.reason = challenge(
                registry, name, registered.version, numeric.get("test_accuracy", 0.0), dataset_dir,
                champion_tolerance,
            )
            if promote:
                registry.set_champion(name, registered.version)
            registered.champion = promote
            registry.record_decision(name, registered.version, promote, registered.reason)
    print(f"  registration: {registered.name} version {registered.version} in {registered.registry}: "
          f"{registered.reason}", flush=True)
    return registered
