"""Everything ``tlp`` learns from the machine it runs on: environment variables, caches,
credentials and whether a host answers. The runners call these; nothing below the runners
reads the environment (except what Vertex AI gives each training replica: the cluster spec
TF_CONFIG, read in ``tlp.components.lib.strategy``, and AIP_TENSORBOARD_LOG_DIR, read in
``tlp.components.lib.training.tensorboard_dir``)."""

from __future__ import annotations

import getpass
import logging
import os
import socket

from tlp.components.lib.specs import ConfigError

# Hosts the real downloads come from; "reachable" means a TCP connection opens quickly.
WEIGHTS_HOST = ("storage.googleapis.com", 443)
TFDS_HOSTS = {"cats_vs_dogs": ("download.microsoft.com", 443)}


def reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def imagenet_weights_cached(base: str, alpha: float, image_size: int) -> bool:
    cache = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "models")
    if base == "MobileNetV2":
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{image_size}_no_top.h5"
        return os.path.isfile(os.path.join(cache, name))
    prefix = base.lower().replace("v2", "_v2").replace("v3", "_v3")
    return os.path.isdir(cache) and any(n.lower().startswith(prefix) for n in os.listdir(cache))


def tfds_cached(name: str) -> bool:
    import tensorflow_datasets as tfds

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # looking is not failing: no "has no dataset_info.json" warnings
    try:
        return tfds.builder(name).is_prepared()
    except Exception:  # unknown name or broken install: not cached, the explicit path reports it
        return False
    finally:
        absl.setLevel(level)


def google_cloud_project(given: str = "") -> str:
    """--project, else what gcloud and the client libraries would use."""
    return given or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT") or ""


def google_cloud_region(given: str = "") -> str:
    return given or os.environ.get("GOOGLE_CLOUD_REGION") or os.environ.get("CLOUDSDK_COMPUTE_REGION") or ""


def check_credentials() -> None:
    """Fails early, with how to log in, when no Application Default Credentials exist."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        google.auth.default()
    except DefaultCredentialsError as error:
        raise ConfigError(
            "no Google Cloud credentials found; log in with `gcloud auth application-default login` or set "
            f"GOOGLE_APPLICATION_CREDENTIALS to a service-account key file ({str(error).splitlines()[0]})."
        ) from None


def quiet_tensorflow() -> None:
    """Less C++ start-up noise from TensorFlow in this process and the steps it starts."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def vertex_serving_variables() -> dict[str, str]:
    """The custom-container contract Vertex AI gives a serving container (AIP_HTTP_PORT,
    AIP_PREDICT_ROUTE, AIP_HEALTH_ROUTE, AIP_STORAGE_URI, ...)."""
    return {name: value for name, value in os.environ.items() if name.startswith("AIP_")}


def current_user() -> str:
    """Who runs ``tlp`` on this machine (recorded on a version promoted or rolled back by hand)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "unknown"
