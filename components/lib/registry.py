"""Model registries, chosen by URI.

- ``sqlite:///path/registry.db`` (the local default), or any MLflow tracking URI
  (``http://mlflow:5000``...): an MLflow Model Registry. With SQLite it is embedded: no server.
- ``vertex://PROJECT/REGION/MODEL``: the Vertex AI Model Registry (cloud issue).

Every registered version carries the metrics, the training parameters, the data spec and
fingerprint, the weights spec and the code version, so any version can be traced.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from components.lib.specs import ConfigError

CHAMPION_ALIAS = "champion"
EXPERIMENT = "transfer-learning"


@dataclass
class Registered:
    registry: str
    name: str
    version: str
    champion: bool
    existing: bool = False  # the same model artifact was registered before

    def as_dict(self) -> dict:
        return {
            "registry": self.registry,
            "name": self.name,
            "version": self.version,
            "champion": self.champion,
            "existing": self.existing,
        }


def check_registry_uri(uri: str) -> str:
    """Validates a registry URI early (before any training). Returns it normalised."""
    if uri.startswith("vertex://") or uri == "vertex":
        raise ConfigError(
            f"--registry {uri} (Vertex AI Model Registry) is not available yet in this version; "
            "use an MLflow URI such as sqlite:///tlp-runs/registry.db."
        )
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return "sqlite:///" + os.path.abspath(path)
    if uri.startswith(("http://", "https://", "databricks")):
        return uri
    raise ConfigError(
        f"--registry {uri!r} is not a registry URI I know; use sqlite:///PATH.db (local MLflow "
        "registry), http(s)://HOST (an MLflow server)."
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


class MlflowRegistry:
    def __init__(self, uri: str):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = check_registry_uri(uri)
        if self.uri.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(self.uri[len("sqlite:///"):]), exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self._mlflow = mlflow

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
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException

        digest = model_digest(model_dir)
        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
                raise
        for version in self.client.search_model_versions(f"name = '{name}'"):
            if version.tags.get("model_digest") == digest:
                champion = self._is_champion(name, version.version)
                return Registered(self.uri, name, str(version.version), champion, existing=True)

        run = self.client.create_run(self._experiment_id(), tags={"mlflow.runName": name})
        run_id = run.info.run_id
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        self.client.log_artifacts(run_id, model_dir, "model")
        self.client.set_terminated(run_id)
        version_tags = {**{k: str(v) for k, v in tags.items()}, "model_digest": digest}
        version_tags.update({f"metric.{k}": f"{float(v):.6f}" for k, v in metrics.items()})
        version = self.client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=version_tags
        )
        champion = False
        if not self._has_champion(name):
            self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
            champion = True
        return Registered(self.uri, name, str(version.version), champion)

    def _has_champion(self, name: str) -> bool:
        return CHAMPION_ALIAS in self.client.get_registered_model(name).aliases

    def _is_champion(self, name: str, version) -> bool:
        return self.client.get_registered_model(name).aliases.get(CHAMPION_ALIAS) == str(version)

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


def open_registry(uri: str) -> MlflowRegistry:
    return MlflowRegistry(uri)


def register_model(
    model_dir: str, dataset_dir: str, metrics: dict, registry_uri: str, model_name: str = ""
) -> Registered:
    """The registration step: gathers lineage from the model and data set, then registers."""
    from components.container_images import project_version
    from components.lib import images
    from components.lib import model as model_lib
    from components.lib.specs import parse_data_spec

    info = model_lib.read_info(model_dir)
    data = images.read_metadata(dataset_dir)
    name = model_name or parse_data_spec(data["source"]).short_name
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
    registered = open_registry(registry_uri).register(
        model_dir, name, metrics=numeric, params=params, tags=tags
    )
    print(f"  registration: {registered.name} version {registered.version} in {registered.registry}"
          f"{' (champion)' if registered.champion else ''}", flush=True)
    return registered
