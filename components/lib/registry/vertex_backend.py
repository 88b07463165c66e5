"""The Vertex AI Model Registry behind ``vertex://PROJECT/REGION[/MODEL][?OPTIONS]`` URIs.

Same interface as the MLflow registry (``base.Registry``), so registration, champion/challenger,
the data checks and ``tlp models`` read the same for both. The first registration creates the
model; later ones upload new versions under it (``parent_model``). The ``champion`` version alias
marks the champion, and the champion is also the model's default version, so ``Model(NAME)`` and
endpoints get it. Each version's record (metrics, parameters, lineage, decisions, promotions) is
JSON in its version description (``describe``): labels hold only short values.

Options (URI query): ``api_endpoint`` (a private or regional endpoint host; an ``http://`` URL
talks REST over plain HTTP, e.g. to a stand-in), ``staging_bucket`` (``gs://...``: where a
model on a local disk is uploaded first; not needed in cloud runs, whose models are in GCS),
``image_repo`` (where our images live, e.g. ``us-docker.pkg.dev/PROJECT/tlp``) and
``serving_image`` (the serving container). The default serving container is our own
``IMAGE_REPO/tlp-serve:VERSION`` (``tlp serve`` on KServe's server, built from the same lock as
training); ``serving_image=prebuilt-tf2.15`` picks Vertex AI's prebuilt TF 2.15 image instead,
whose support has ended; any other value is used as the image URI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile

from tlp.components.lib.registry.base import (
    CHAMPION_ALIAS,
    ModelVersion,
    Registered,
    model_digest,
    unknown_model,
    unknown_version,
)
from tlp.components.lib.specs import ConfigError, parse_vertex_uri
from tlp.components.lib.version import DEFAULT_REPO, project_version

# Vertex AI's prebuilt TensorFlow serving image: it serves the SavedModel's serving signature and
# decodes {"b64": ...} for our `image_bytes` input. 2.15 is the newest prebuilt TF release, and
# the last: its support ended on 2026-01-14 and Google removes it on 2027-01-14. Kept behind
# serving_image=prebuilt-tf2.15; the default is our own tlp-serve image.
PREBUILT = "prebuilt-tf2.15"
SERVING_IMAGE = "{region}-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
PREBUILT_END_OF_LIFE = (
    "Vertex AI's prebuilt TF 2.15 serving image is past its end of support (2026-01-14) and will be removed on "
    "2027-01-14; there is none for TF 2.16+. Serve with our tlp-serve image (drop serving_image=prebuilt-tf2.15)."
)
SERVE_IMAGE_NAME = "tlp-serve"
SERVING_PORT = 8080  # tlp serve listens on AIP_HTTP_PORT, which Vertex AI sets to this
# The prebuilt images live in three multi-region registries.
_IMAGE_REGIONS = {"us": "us", "northamerica": "us", "southamerica": "us", "europe": "europe"}
_LABEL_VALUE = re.compile(r"[^a-z0-9_-]+")
# A version's record (metrics, parameters, lineage, decisions) is JSON in its version description;
# kept under this length, dropping the least needed parts first, so it always parses.
DESCRIPTION_LIMIT = 2000
_DROPPABLE_TAGS = ("class_counts",)  # without it the data checks compare totals only, and say so


def label_value(value) -> str:
    """Vertex labels allow 63 lowercase letters, digits, ``_`` and ``-``: 0.9812 -> 0_9812."""
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return _LABEL_VALUE.sub("_", text.lower().replace(".", "_"))[:63]


def gcs_uri(path: str) -> str | None:
    """The gs:// URI of a path on Vertex AI's GCS mount (``/gcs/BUCKET/...``), else None."""
    if path.startswith("gs://"):
        return path
    if path.startswith("/gcs/"):
        return "gs://" + path[len("/gcs/"):]
    return None


class VertexRegistry:
    def __init__(self, uri: str):
        from google.cloud import aiplatform

        self.location = parse_vertex_uri(uri)
        self.uri = str(self.location)
        self.default_name = self.location.model
        endpoint = self.location.options.get("api_endpoint")
        transport = {"api_transport": "rest"} if endpoint and endpoint.startswith("http://") else {}
        aiplatform.init(
            project=self.location.project, location=self.location.region,
            **({"api_endpoint": endpoint} if endpoint else {}), **transport,
        )
        self._aiplatform = aiplatform

    @contextlib.contextmanager
    def lock(self):
        yield  # the service orders concurrent uploads itself

    def _parent(self, name: str):
        """The registered model called ``name`` (the oldest, if several share the name), or None."""
        models = self._aiplatform.Model.list(filter=f'display_name="{name}"', order_by="create_time")
        return models[0] if models else None

    def _versions(self, name: str):
        parent = self._parent(name)
        if parent is None:
            return None, []
        return parent, self._aiplatform.models.ModelRegistry(parent).list_versions()

    def register(self, model_dir: str, name: str, *, metrics: dict, params: dict, tags: dict):
        digest = model_digest(model_dir)[:40]
        parent = self._parent(name)
        if parent is not None:
            same = self._aiplatform.models.ModelRegistry(parent).list_versions(
                filter=f'labels.model_digest="{digest}"'
            )
            if same:
                version = same[0].version_id
                return Registered(self.uri, name, version, self.champion_version(name) == version, existing=True)
        artifact_uri = gcs_uri(model_dir)
        staging = self.location.options.get("staging_bucket")
        if artifact_uri is None and not staging:
            raise ConfigError(
                f"the model at {model_dir} is on a local disk and {self.uri} names no staging bucket to upload "
                "it to; add ?staging_bucket=gs://BUCKET to the registry URI."
            )
        if artifact_uri is None and staging:
            _check_bucket(staging, self.location.project)
        labels = {"model_digest": digest, "tlp_code_version": label_value(tags.get("code_version", ""))}
        labels.update({label_value(k): label_value(float(v)) for k, v in metrics.items()})
        description = describe({"metrics": metrics, "params": params, "tags": tags})
        serving_image = self.serving_image()
        ours = serving_image.rsplit("/", 1)[-1].startswith(f"{SERVE_IMAGE_NAME}:")
        model = self._aiplatform.Model.upload(
            display_name=name,
            artifact_uri=artifact_uri or model_dir,
            serving_container_image_uri=serving_image,
            # tlp serve finds the model at AIP_STORAGE_URI and serves AIP_PREDICT_ROUTE/AIP_HEALTH_ROUTE.
            **({"serving_container_ports": [SERVING_PORT]} if ours else {}),
            parent_model=parent.resource_name if parent is not None else None,
            # The champion alias decides the default version, not the upload order.
            is_default_version=parent is None,
            version_description=description,
            labels=labels,
            staging_bucket=staging,
        )
        print(f"  registration: uploaded {model.resource_name} version {model.version_id} "
              f"(serving image {serving_image})", flush=True)
        return Registered(self.uri, name, str(model.version_id), False)

    def serving_image(self) -> str:
        """The serving container registered with each version (see the module docstring)."""
        chosen = self.location.options.get("serving_image", "")
        if chosen == PREBUILT:
            print(f"  registration: warning: {PREBUILT_END_OF_LIFE}", flush=True)
            return SERVING_IMAGE.format(region=_IMAGE_REGIONS.get(self.location.region.split("-")[0], "asia"))
        if chosen:
            return chosen
        repo = self.location.options.get("image_repo", "")
        if not repo:
            print(f"  registration: note: serving image {DEFAULT_REPO}/{SERVE_IMAGE_NAME}:{project_version()}; add "
                  "?image_repo=REGION-docker.pkg.dev/PROJECT/REPO to the registry URI so Vertex AI can pull it.",
                  flush=True)
        return f"{(repo or DEFAULT_REPO).rstrip('/')}/{SERVE_IMAGE_NAME}:{project_version()}"

    def champion_version(self, name: str) -> str | None:
        _parent, versions = self._versions(name)
        for version in versions:
            if CHAMPION_ALIAS in (version.version_aliases or []):
                return str(version.version_id)
        return None

    def set_champion(self, name: str, version: str) -> None:
        parent = self._parent(name)
        # "default" moves too, so serving Model(NAME) or deploying it without a version gets the champion.
        self._aiplatform.models.ModelRegistry(parent).add_version_aliases([CHAMPION_ALIAS, "default"], version)

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Merges ``tags`` into the version's record (its version description; labels cannot hold a
        sentence)."""
        parent = self._parent(name)
        if parent is None:
            raise unknown_model(name, self.uri, self.model_names())
        from google.protobuf import field_mask_pb2

        current = self.version(name, version)
        record = {"metrics": current.metrics, "params": current.params, "tags": {**current.tags, **tags}}
        # A name with @VERSION updates that version only (UpdateModel's version-specific fields).
        update = parent.gca_resource.__class__(
            name=f"{parent.resource_name}@{version}", version_description=describe(record)
        )
        mask = field_mask_pb2.FieldMask(paths=["version_description"])
        parent.api_client.update_model(model=update, update_mask=mask)

    def attach_files(self, name: str, version: str, directory: str, files: list[str], *, artifact_path: str,
                     metrics: dict[str, float], tags: dict[str, str]) -> str:
        """A Vertex AI model version holds one artifact URI (the served model): the files stay where the
        step wrote them (the pipeline root, in Cloud Storage), and the version's record names that place
        with the metrics and tags. Returns that place."""
        location = gcs_uri(directory)
        if location is None:
            raise ConfigError(
                f"the files at {directory} are on a local disk, where Vertex AI cannot keep them for {name} version "
                f"{version}; write them to Cloud Storage (--output gs://BUCKET/PATH)."
            )
        self.set_tags(name, version, {
            **tags, f"{artifact_path}.location": location, f"{artifact_path}.files": ",".join(files),
            **{f"metric.{k}": f"{float(v):.6f}" for k, v in metrics.items()},
        })
        return location

    def model_names(self) -> list[str]:
        return sorted({model.display_name for model in self._aiplatform.Model.list()})

    def versions(self, name: str) -> list[ModelVersion]:
        parent, found = self._versions(name)
        if parent is None:
            raise unknown_model(name, self.uri, self.model_names())
        records = []
        for info in found:
            record = _read_description(info.version_description)
            created = info.version_create_time
            records.append(ModelVersion(
                name, str(info.version_id), created.isoformat(timespec="seconds") if created else "",
                sorted(info.version_aliases or []), record["metrics"], record["tags"], record["params"],
            ))
        return sorted(records, key=lambda record: int(record.version))

    def version(self, name: str, version: str) -> ModelVersion:
        versions = self.versions(name)
        for record in versions:
            if record.version == str(version):
                return record
        raise unknown_version(name, version, self.uri, versions)

    def model_version(self, reference: str):
        """``NAME/VERSION`` or ``NAME@ALIAS`` -> that version as an ``aiplatform.Model`` (its
        ``versioned_resource_name`` is what endpoints and batch prediction jobs take)."""
        name, alias_sep, alias = reference.partition("@")
        version = alias if alias_sep else None
        if not alias_sep:
            name, _, version = reference.rpartition("/")
        parent = self._parent(name) if name else None
        if parent is None or not version:
            raise ConfigError(
                f"model {reference!r} is not in the registry {self.uri}; use NAME/VERSION or NAME@champion "
                "of a registered model."
            )
        return self._aiplatform.models.ModelRegistry(parent).get_model(version)

    def model_dir(self, reference: str) -> str:
        """``NAME/VERSION`` or ``NAME@ALIAS`` -> a local directory holding that version's model."""
        artifact_uri = self.model_version(reference).uri
        mounted = "/gcs/" + artifact_uri[len("gs://"):]
        if os.path.isdir(mounted):  # on Vertex AI, buckets are mounted under /gcs
            return mounted
        return download_prefix(artifact_uri, self.location.project)


def describe(record: dict) -> str:
    """A version's record as JSON within ``DESCRIPTION_LIMIT``: parameters go first, then the
    droppable tags, then long texts are cut; what is left still parses."""
    record = {key: dict(record.get(key) or {}) for key in ("metrics", "params", "tags")}

    def text():
        return json.dumps(record, sort_keys=True, separators=(",", ":"))

    if len(text()) > DESCRIPTION_LIMIT:
        record["params"] = {}
    for key in _DROPPABLE_TAGS:
        if len(text()) > DESCRIPTION_LIMIT:
            record["tags"].pop(key, None)
    while len(text()) > DESCRIPTION_LIMIT:
        longest = max(record["tags"], key=lambda key: len(str(record["tags"][key])), default=None)
        if longest is None or len(str(record["tags"][longest])) <= 40:
            raise ConfigError(f"a model version's record does not fit Vertex AI's description ({len(text())} chars).")
        record["tags"][longest] = str(record["tags"][longest])[: len(str(record["tags"][longest])) // 2] + "..."
    return text()


def _read_description(description: str | None) -> dict:
    """The record ``describe`` wrote; a version registered otherwise has an empty one."""
    try:
        record = json.loads(description or "{}")
    except ValueError:
        record = {}
    if not isinstance(record, dict):
        record = {}
    metrics = {k: float(v) for k, v in (record.get("metrics") or {}).items() if isinstance(v, (int, float))}
    return {"metrics": metrics, "params": {k: str(v) for k, v in (record.get("params") or {}).items()},
            "tags": {k: str(v) for k, v in (record.get("tags") or {}).items()}}


def _check_bucket(uri: str, project: str) -> None:
    from google.cloud import storage

    name = uri[len("gs://"):].split("/", 1)[0]
    if not storage.Client(project=project).bucket(name).exists():
        raise ConfigError(
            f"the staging bucket {uri} does not exist; create it (gcloud storage buckets create gs://{name}) or "
            "name another in ?staging_bucket=."
        )


def download_prefix(uri: str, project: str | None = None) -> str:
    """Copies every object under a gs:// prefix to a new local directory; returns the directory."""
    from google.cloud import storage

    bucket_name, _, prefix = uri[len("gs://"):].partition("/")
    prefix = prefix.rstrip("/") + "/"
    target = tempfile.mkdtemp(prefix="tlp-vertex-model-")
    blobs = list(storage.Client(project=project).list_blobs(bucket_name, prefix=prefix))
    if not blobs:
        raise ConfigError(f"the registered model's files at {uri} are gone; nothing to load.")
    for blob in blobs:
        path = os.path.join(target, blob.name[len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not blob.name.endswith("/"):
            blob.download_to_filename(path)
    return target
