"""The MLflow Model Registry: a SQLite file (embedded, no server; the local default) or an MLflow
tracking server. Versions carry metrics, parameters and tags; the ``champion`` alias marks the
champion."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import time

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random

from tlp.components.lib.registry.base import (
    CHAMPION_ALIAS,
    ModelVersion,
    Registered,
    model_digest,
    unknown_model,
    unknown_version,
)
from tlp.components.lib.specs import ConfigError, check_registry_uri

EXPERIMENT = "transfer-learning"
_TRANSIENT = ("database is locked", "already exists", "unique constraint", "no such table")


def _transient(error: BaseException) -> bool:
    """SQLite allows one writer at a time: a racing registration sees "database is locked" (or a
    half-created schema). MlflowException and SQLAlchemy's OperationalError say so only in text."""
    return any(text in str(error).lower() for text in _TRANSIENT)


_RETRY = Retrying(
    retry=retry_if_exception(_transient), stop=stop_after_attempt(20), wait=wait_random(0.2, 1.0), reraise=True
)


def _call(action):
    """``action()``, tried again after a short random pause while the error is transient."""
    return _RETRY.copy()(action)


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
            self.client = _call(lambda: MlflowClient(tracking_uri=self.uri, registry_uri=self.uri))
            _call(lambda: self.client.search_registered_models(max_results=1))
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
        _call(lambda: self._ensure_model(name))
        existing = self._version_with_digest(name, digest)
        if existing is not None:
            return Registered(self.uri, name, existing, self.champion_version(name) == existing, existing=True)

        from mlflow.entities import Metric, Param, RunTag

        run = _call(lambda: self.client.create_run(_call(self._experiment_id), tags={"mlflow.runName": name}))
        run_id = run.info.run_id
        _call(lambda: self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        ))
        self.client.log_artifacts(run_id, model_dir, "model")
        _call(lambda: self.client.set_terminated(run_id))
        version_tags = {**{k: str(v) for k, v in tags.items()}, "model_digest": digest}
        version_tags.update({f"metric.{k}": f"{float(v):.6f}" for k, v in metrics.items()})
        version = _call(lambda: self.client.create_model_version(
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
        versions = _call(lambda: self.client.search_model_versions(f"name = '{name}'"))
        for version in versions:
            if version.tags.get("model_digest") == digest:
                return str(version.version)
        return None

    def champion_version(self, name: str) -> str | None:
        version = _call(lambda: self.client.get_registered_model(name)).aliases.get(CHAMPION_ALIAS)
        return None if version is None else str(version)

    def set_champion(self, name: str, version: str) -> None:
        _call(lambda: self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version))

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            _call(lambda key=key, value=value: self.client.set_model_version_tag(name, version, key, str(value)))

    def attach_files(self, name: str, version: str, directory: str, files: list[str], *, artifact_path: str,
                     metrics: dict[str, float], tags: dict[str, str]) -> str:
        """Logs the files as artifacts (and the metrics) of the run that holds the version's model; the
        tags go on the version. Returns the artifacts' URI."""
        from mlflow.entities import Metric

        run_id = _call(lambda: self.client.get_model_version(name, version)).run_id
        for file in files:
            _call(lambda file=file: self.client.log_artifact(run_id, os.path.join(directory, file), artifact_path))
        # Stamped with the time: MLflow reads a metric's latest value by step, then time, then size, so
        # a second export's measurements replace the first's (with time 0 the largest stayed).
        now = int(time.time() * 1000)
        _call(lambda: self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()]))
        self.set_tags(name, version, {**tags, **{f"metric.{k}": f"{float(v):.6f}" for k, v in metrics.items()}})
        return f"{_call(lambda: self.client.get_run(run_id)).info.artifact_uri}/{artifact_path}"

    def model_names(self) -> list[str]:
        return sorted(model.name for model in _call(lambda: self.client.search_registered_models(max_results=1000)))

    def versions(self, name: str) -> list[ModelVersion]:
        from mlflow.exceptions import MlflowException

        try:
            model = _call(lambda: self.client.get_registered_model(name))
        except MlflowException as error:
            if "RESOURCE_DOES_NOT_EXIST" not in str(error.error_code):
                raise
            raise unknown_model(name, self.uri, self.model_names()) from None
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        quoted = name.replace("'", "\\'")
        found = _call(lambda: self.client.search_model_versions(f"name = '{quoted}'"))
        records = [_record(name, v, aliases.get(str(v.version), [])) for v in found]
        return sorted(records, key=lambda record: int(record.version))

    def version(self, name: str, version: str) -> ModelVersion:
        versions = self.versions(name)
        record = next((v for v in versions if v.version == str(version)), None)
        if record is None:
            raise unknown_version(name, version, self.uri, versions)
        run_id = _call(lambda: self.client.get_model_version(name, record.version)).run_id
        if run_id:
            record.params = dict(_call(lambda: self.client.get_run(run_id)).data.params)
        return record

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


def _record(name: str, version, aliases: list[str]) -> ModelVersion:
    tags = dict(version.tags or {})
    metrics = {key[len("metric."):]: float(value) for key, value in tags.items() if key.startswith("metric.")}
    created = datetime.datetime.fromtimestamp(version.creation_timestamp / 1000, datetime.timezone.utc)
    return ModelVersion(
        name, str(version.version), created.isoformat(timespec="seconds"), sorted(aliases), metrics,
        {key: value for key, value in tags.items() if not key.startswith("metric.")},
    )
