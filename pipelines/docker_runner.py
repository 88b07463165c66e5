"""Running the pipeline's steps in their container images (kfp's DockerRunner): the checks
that must pass before the first container starts, and the runner itself.

The containers run as the invoking host user (uid:gid), so whatever they write under the
pipeline root belongs to that user, whoever it is; the images give every uid a writable HOME.
They run with networking off unless the settings name something only the network can reach.
With ``--devices gpu[:N]`` they are given the host's GPUs (the engine must be able to hand them out:
the NVIDIA Container Toolkit); kfp's DockerRunner takes one set of arguments for every step, so
every step's container gets them, and the training image's TensorFlow (CUDA) is the one that uses them."""

from __future__ import annotations

import os
import pwd

from tlp.components.lib import specs
from tlp.components.lib.settings import ImageOptions, LocalRunOptions, Settings
from tlp.components.lib.version import image_reference

# Set by containers/train.Dockerfile: "1" if the ImageNet weights below were baked in.
BAKED_WEIGHTS_LABEL = "tlp.baked-weights"
BAKED_WEIGHTS = ("MobileNetV2", 1.0, 160)  # base, alpha, image size


def check_docker_config(settings: Settings, local: LocalRunOptions) -> None:
    """With --runner docker only the pipeline root is mounted into the containers."""
    pipeline_root = _pipeline_root(local)
    data = specs.parse_data_spec(settings.data.data)
    if data.kind == "folder" and not data.path.startswith("gs://"):
        if not os.path.abspath(data.path).startswith(pipeline_root + os.sep):
            raise specs.ConfigError(
                f"--runner docker cannot see --data folder:{data.path} (only {pipeline_root} is "
                "mounted into the containers); copy the photos under it or use the subprocess runner."
            )
    weights = settings.model.weights
    if weights not in ("imagenet", "none"):
        raise specs.ConfigError(
            f"--runner docker cannot see the weights file {weights}; use imagenet (baked "
            "into the training image) or none."
        )
    registry = settings.registry.registry
    if registry.startswith("sqlite:///") and not registry[len("sqlite:///"):].startswith(pipeline_root):
        raise specs.ConfigError(
            f"--runner docker cannot reach the registry {registry}; use --registry "
            f"sqlite:///{pipeline_root}/registry.db or an MLflow server URL."
        )


def _pipeline_root(local: LocalRunOptions) -> str:
    return os.path.join(os.path.abspath(local.output_dir), "pipeline-root")


def connect():
    """A client of a running Docker engine, or ConfigError saying why there is none."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if "Permission denied" in str(error) or "PermissionError" in str(error):
            raise specs.ConfigError(
                f"--runner docker may not use the Docker engine at {where} (permission denied); add "
                "your user to the docker group and log in again, or use --runner subprocess (the default)."
            ) from error
        raise specs.ConfigError(
            f"--runner docker needs a running Docker engine and none answers at {where}; start it "
            "(e.g. `sudo dockerd &` or `sudo systemctl start docker`), or use --runner subprocess (the default)."
        ) from error
    return client


def check_images(client, references) -> dict[str, dict]:
    """Each image must be on this machine (kfp would otherwise try to pull it, mid-run) and be
    built for any-user runs (HOME set). Returns each image's labels."""
    import docker

    labels = {}
    for reference in references:
        try:
            image = client.images.get(reference)
        except docker.errors.ImageNotFound as error:
            raise specs.ConfigError(
                f"--runner docker needs the image {reference}, which is not on this machine; build it "
                "with `make images` (`make images-offline` without Docker Hub) or pull it."
            ) from error
        environment = image.attrs.get("Config", {}).get("Env") or []
        if not any(variable.startswith("HOME=") for variable in environment):
            raise specs.ConfigError(
                f"the image {reference} predates containers that run as the invoking user (it sets "
                "no HOME); rebuild it with `make images`."
            )
        labels[reference] = image.labels or {}
    return labels


def container_user() -> tuple[str, dict[str, str]]:
    """``uid:gid`` of the invoking user, and the names getpass/MLflow look up without an
    /etc/passwd entry in the image."""
    uid, gid = os.getuid(), os.getgid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return f"{uid}:{gid}", {"USER": name, "LOGNAME": name}


def check_mount(client, image: str, pipeline_root: str, user: str) -> None:
    """Starts one short container the way kfp will (same bind mount, same user) and writes a
    file into the pipeline root: catches engines that cannot mount it (a remote DOCKER_HOST,
    SELinux, a root-squashed share) before any step runs."""
    import docker

    mode = "rw,z" if "name=selinux" in client.info().get("SecurityOptions", []) else "rw"
    probe = 'touch "$0/.tlp-mount-probe" && rm "$0/.tlp-mount-probe"'
    try:
        client.containers.run(
            image, ["sh", "-c", probe, pipeline_root], entrypoint=[], user=user, network_mode="none",
            volumes={pipeline_root: {"bind": pipeline_root, "mode": mode}}, remove=True,
        )
    except docker.errors.ContainerError as error:
        detail = (error.stderr or b"").decode(errors="replace").strip().splitlines()
        raise specs.ConfigError(
            f"a container running as {user} cannot write to the pipeline root {pipeline_root} mounted "
            f"from the Docker engine's machine ({detail[-1] if detail else error}); run tlp on the "
            "engine's machine, or choose an --output-dir this user owns."
        ) from error
    except docker.errors.APIError as error:
        raise specs.ConfigError(
            f"the Docker engine cannot mount the pipeline root {pipeline_root} ({error.explanation}); "
            "choose another --output-dir."
        ) from error


def gpu_requests(devices: str) -> list:
    """docker-py's device requests that hand the host's GPUs to a container for ``--devices gpu``
    (all of them) or ``gpu:N`` (N); none for ``auto`` and ``cpu[:N]`` (containers run on the CPU)."""
    import docker

    kind, count = specs.parse_devices(devices)
    if kind != "gpu":
        return []
    return [docker.types.DeviceRequest(count=count or -1, capabilities=[["gpu"]])]


def check_gpus(client, image: str, user: str, requests: list, devices: str) -> None:
    """Starts one short container with the GPU requests, as kfp will start the steps: an engine
    without a GPU runtime refuses it here, in one sentence, rather than at the training step."""
    import docker

    container = client.containers.create(image, ["true"], entrypoint=[], user=user, network_mode="none",
                                         device_requests=requests)
    try:
        container.start()
        container.wait(timeout=120)
    except docker.errors.APIError as error:
        raise specs.ConfigError(
            f"--devices {devices} with --runner docker needs GPUs the Docker engine can hand to containers, and "
            f"it refused ({error.explanation}); install the NVIDIA driver and the NVIDIA Container Toolkit "
            "on the engine's machine, or use --devices cpu."
        ) from error
    finally:
        container.remove(force=True)


def network_reasons(settings: Settings, baked_weights: bool) -> list[str]:
    """Why the containers need the network with these settings (none: they run without it)."""
    reasons = []
    spec, registry, model = settings.data.data, settings.registry.registry, settings.model
    data = specs.parse_data_spec(spec)
    if data.kind == "tfds":
        reasons.append(f"--data {spec} is downloaded by the data-prep container")
    elif data.kind == "folder" and data.path.startswith("gs://"):
        reasons.append(f"--data {spec} is read from Cloud Storage")
    if not registry.startswith("sqlite:///"):
        reasons.append(f"the registry {registry} is a server")
    if model.weights == "imagenet":
        wanted = (model.base, float(model.alpha), int(model.image_size))
        if not baked_weights or wanted != BAKED_WEIGHTS:
            reasons.append(
                f"the ImageNet weights of {model.base} alpha {model.alpha} at {model.image_size} px "
                "are not baked into the training image and are downloaded"
            )
    return reasons


def make_runner(settings: Settings, local: LocalRunOptions, chosen: ImageOptions):
    """A kfp DockerRunner for the (resolved, checked) settings, after every check passed."""
    from kfp import local as kfp_local

    check_docker_config(settings, local)
    images = {
        kind: image_reference(chosen.image_repo, chosen.image_tag or None, kind=kind) for kind in ("light", "train")
    }
    client = connect()
    try:
        labels = check_images(client, images.values())
        user, environment = container_user()
        check_mount(client, images["light"], _pipeline_root(local), user)
        requests = gpu_requests(settings.runtime.devices)
        if requests:
            check_gpus(client, images["train"], user, requests, settings.runtime.devices)
    finally:
        client.close()
    reasons = network_reasons(settings, labels[images["train"]].get(BAKED_WEIGHTS_LABEL) == "1")
    # kfp passes these to docker-py's containers.run for every step. (kfp replaces `environment`
    # for a task that sets its own variables; none of ours does.)
    arguments = {"user": user, "environment": environment}
    if requests:
        arguments["device_requests"] = requests
    gpus = f", with the host's GPUs (--devices {settings.runtime.devices})" if requests else ""
    if reasons:
        print(f"tlp run: steps run in containers as {user}{gpus}, with the network: {'; '.join(reasons)}",
              flush=True)
    else:
        arguments["network_mode"] = "none"
        print(f"tlp run: steps run in containers as {user}{gpus}, networking off", flush=True)
    return kfp_local.DockerRunner(**arguments)
