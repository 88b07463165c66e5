"""Everything checked before a run starts, so a bad setting costs milliseconds, not a failed
step: one ``ConfigError`` sentence naming the value and the fix."""

from __future__ import annotations

import dataclasses
import os
import re

from tlp.components.lib import specs
from tlp.components.lib.dataprep.sources import IMAGE_EXTENSIONS
from tlp.components.lib.model import base_layer_count
from tlp.components.lib.settings import CloudOptions, HardwareOptions, Settings, TrackingOptions
from tlp.components.lib.specs import ConfigError
from tlp.pipelines import environment

_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_EXPERIMENT = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
_TENSORBOARD = re.compile(r"projects/([^/]+)/locations/([^/]+)/tensorboards/([^/]+)")


def check_settings(settings: Settings, *, local: bool = True, check_layers: bool = True) -> Settings:
    """Every option's own rules and the rules across options again (after ``auto`` and the default
    registry were resolved), then what only this machine can tell. Returns the settings normalised.
    ``local``: the run happens on this machine (not submitted to the cloud)."""
    settings = Settings.from_values(settings.values())
    data = specs.parse_data_spec(settings.data.data)
    if local and data.kind == "folder" and not data.path.startswith("gs://"):
        check_folder(data.path)
    registry = settings.registry.registry
    if local:
        specs.check_registry_uri(registry)  # `vertex` alone names no project: only a cloud run knows it
    if local and registry.startswith(specs.VERTEX_SCHEME):
        if "staging_bucket" not in specs.parse_vertex_uri(registry).options:
            raise ConfigError(
                f"--registry {registry}: a local run's model is uploaded to Cloud Storage first; add "
                "?staging_bucket=gs://BUCKET to the URI."
            )
        environment.check_credentials()
    tuning, model = settings.fine_tuning, settings.model
    if check_layers and tuning.fine_tune_epochs > 0:

        count = base_layer_count(model.base, model.alpha, model.image_size)
        specs.check_fine_tune_at(tuning.fine_tune_at, count, model.base)
    return settings


def check_folder(path: str) -> None:
    """A local photo folder: at least two class subfolders holding images."""

    if not os.path.isdir(path):
        raise ConfigError(
            f"--data folder:{path} is not a directory; give a folder holding one subfolder of "
            "images per class."
        )
    classes = {}
    for name in sorted(os.listdir(path)):
        class_dir = os.path.join(path, name)
        if os.path.isdir(class_dir) and not name.startswith("."):
            classes[name] = sum(
                1
                for _root, _dirs, files in os.walk(class_dir, followlinks=True)
                for f in files
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
    with_images = [name for name, count in classes.items() if count]
    if len(with_images) < 2:
        found = ", ".join(f"{n!r} ({c} images)" for n, c in classes.items()) or "no subfolders"
        raise ConfigError(
            f"--data folder:{path} has {len(with_images)} class folder(s) with images ({found}); "
            "put each class's images in its own subfolder, at least two classes."
        )


# --- cloud runs -------------------------------------------------------------------------------


def parse_labels(items: list[str]) -> dict[str, str]:
    """``--labels team=vision,env=prod`` (repeatable) -> a dict, checked against Google's rules."""
    labels = {}
    for item in (part for value in items for part in value.split(",") if part):
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise ConfigError(
                f"--labels {item!r} is not KEY=VALUE with lowercase letters, digits, '_' or '-' (key starting "
                "with a letter, both at most 63 characters); e.g. --labels team=vision,env=prod."
            )
        labels[key] = value
    return labels


def accelerator_types() -> list[str]:
    """The accelerator names Vertex AI knows, from the API's own enum."""
    from google.cloud.aiplatform_v1.types import AcceleratorType

    return [t.name for t in AcceleratorType.__members__.values() if t.name != "ACCELERATOR_TYPE_UNSPECIFIED"]


def check_hardware(hardware: HardwareOptions, devices: str, on_vertex: bool = True) -> HardwareOptions:
    """GPUs, accelerator, machine type and replicas of the fine-tuning step. Returns them with
    ``gpus`` defaulted to 1 when only an accelerator type was given."""
    if hardware.accelerator:
        known = accelerator_types()
        if hardware.accelerator not in known:
            model = hardware.accelerator.upper().replace("-", "_").rsplit("_", 1)[-1]  # NVIDIA_T4 -> T4
            close = [name for name in known if model in name.split("_")]
            raise ConfigError(
                f"--accelerator {hardware.accelerator!r} is not a Vertex AI accelerator type; use one of "
                f"{', '.join(close or known)}."
            )
        if not hardware.gpus:
            hardware = dataclasses.replace(hardware, gpus=1)
    elif hardware.gpus:
        raise ConfigError(
            f"--gpus {hardware.gpus} needs --accelerator TYPE to say which GPUs, e.g. --accelerator NVIDIA_L4."
        )
    wants_gpus = specs.parse_devices(devices)[0] == "gpu"
    if hardware.replicas > 1 and wants_gpus and not hardware.gpus:
        raise ConfigError(
            f"--replicas {hardware.replicas} with --devices {devices} asks for GPUs but gives the machines none; "
            "add --gpus N --accelerator TYPE, or use --devices auto to train on their CPUs."
        )
    if hardware.replicas > 1 and not on_vertex:
        raise ConfigError(
            f"--replicas {hardware.replicas} runs fine-tuning as a Vertex AI custom job, which a Kubeflow "
            "Pipelines host cannot start; drop --kfp-host or use --replicas 1."
        )
    if hardware.machine_type and not on_vertex:
        raise ConfigError("--machine-type is a Vertex AI setting; with --kfp-host use --gpus/--accelerator only.")
    return hardware


def check_cloud_target(cloud: CloudOptions, *, needs_root: bool = True) -> CloudOptions:
    """Where a cloud run goes: project and region (from the flags or the environment) and the
    pipeline root for Vertex AI, or the Kubeflow Pipelines host. Returns them filled in."""
    if not cloud.on_vertex:
        if not re.match(r"https?://", cloud.kfp_host):
            raise ConfigError(f"--kfp-host {cloud.kfp_host!r} must be the URL of the Kubeflow Pipelines API, e.g. "
                              "http://localhost:8080.")
        if cloud.api_endpoint:
            raise ConfigError("--api-endpoint is a Vertex AI setting; with --kfp-host the host is the endpoint.")
        return cloud
    project = environment.google_cloud_project(cloud.project)
    region = environment.google_cloud_region(cloud.region)
    if not project:
        raise ConfigError("no Google Cloud project: pass --project PROJECT_ID (or set GOOGLE_CLOUD_PROJECT).")
    if not region:
        raise ConfigError("no region: pass --region, e.g. --region us-central1 (or set GOOGLE_CLOUD_REGION).")
    if needs_root and (not cloud.pipeline_root.startswith("gs://") or len(cloud.pipeline_root) <= len("gs://")):
        raise ConfigError(
            f"--pipeline-root {cloud.pipeline_root!r} must be a Cloud Storage URI such as gs://BUCKET/tlp: "
            "Vertex AI keeps the run's data and models there."
        )
    return dataclasses.replace(cloud, project=project, region=region)


def check_cloud_settings(settings: Settings) -> Settings:
    """What a cloud run cannot use: files on this machine."""
    spec = specs.parse_data_spec(settings.data.data)
    if spec.kind == "folder" and not spec.path.startswith("gs://"):
        raise ConfigError(
            f"--data folder:{spec.path} is on this machine, which a cloud run cannot see; upload it "
            f"(gcloud storage cp -r {spec.path} gs://BUCKET/photos) and pass --data folder:gs://BUCKET/photos."
        )
    if settings.model.weights not in ("imagenet", "none"):
        raise ConfigError(
            f"--weights {settings.model.weights} is a file on this machine; a cloud run uses imagenet (baked into "
            "the training image) or none."
        )
    if settings.registry.registry.startswith("sqlite:"):
        raise ConfigError(
            f"--registry {settings.registry.registry} is a file on this machine, which a cloud run cannot reach; "
            "use vertex (the Vertex AI Model Registry) or an MLflow server URL."
        )
    return check_settings(settings, local=False)


def check_tensorboard_name(name: str) -> str:
    """A Vertex AI TensorBoard resource name; returns its region."""
    match = _TENSORBOARD.fullmatch(name)
    if not match:
        raise ConfigError(
            f"--tensorboard {name!r} is not a TensorBoard resource name; give "
            "projects/PROJECT/locations/REGION/tensorboards/ID (Vertex AI > Experiments > TensorBoard instances)."
        )
    return match.group(2)


def check_tracking(tracking: TrackingOptions, cloud: CloudOptions) -> TrackingOptions:
    """``--experiment`` and ``--tensorboard`` of a cloud run (``cloud`` already checked)."""
    if tracking.experiment and cloud.on_vertex and not _EXPERIMENT.fullmatch(tracking.experiment):
        raise ConfigError(
            f"--experiment {tracking.experiment!r} is not a Vertex AI experiment name: lowercase letters, digits "
            "and '-', starting with a letter or digit, at most 128 characters; e.g. --experiment cats-weekly."
        )
    if not tracking.tensorboard:
        return tracking
    if not cloud.on_vertex:
        raise ConfigError("--tensorboard is a Vertex AI TensorBoard; with --kfp-host read the TensorBoard logs the "
                          "training steps write beside their outputs.")
    region = check_tensorboard_name(tracking.tensorboard)
    if region != cloud.region:
        raise ConfigError(f"--tensorboard {tracking.tensorboard} is in {region}, the run in {cloud.region}; "
                          "use a TensorBoard instance in the run's region.")
    if not cloud.service_account:
        raise ConfigError("--tensorboard needs --service-account: Vertex AI uploads a custom job's TensorBoard logs "
                          "only for jobs run as a service account (roles/aiplatform.user and access to the bucket).")
    return tracking
