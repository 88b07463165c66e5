"""The images and the local environment cannot drift: one lock, exact base tags, non-root,
every compiled task on the configured image; and `--runner docker`'s checks and settings, with a
stand-in for the Docker engine (tests/docker/ runs the real thing)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "containers"
DOCKERFILES = sorted(CONTAINERS.glob("*.Dockerfile"))
BUILT_FROM_LOCK = [CONTAINERS / "base.Dockerfile", CONTAINERS / "train.Dockerfile"]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_there_is_a_training_a_base_and_a_serving_image():
    assert {p.name for p in DOCKERFILES} == {"train.Dockerfile", "base.Dockerfile", "serve.Dockerfile",
                                             "dataflow.Dockerfile"}


def _arg_defaults(path: Path) -> dict[str, str]:
    return dict(arg.split("=", 1) for op, arg in _instructions(path) if op == "ARG" and "=" in arg)


def _base_images(path: Path) -> list[str]:
    """The FROM images with build args replaced by their defaults."""
    defaults = _arg_defaults(path)
    return [
        re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], arg.split()[0])
        for op, arg in _instructions(path) if op == "FROM"
    ]


def _lock_install():
    sys.path.insert(0, str(CONTAINERS))
    try:
        import lock_install
    finally:
        sys.path.remove(str(CONTAINERS))
    return lock_install


def test_there_is_a_cpu_a_training_and_a_serving_image():
    assert {p.name for p in DOCKERFILES} == {"base.Dockerfile", "train.Dockerfile", "serve.Dockerfile",
                                             "dataflow.Dockerfile"}


@pytest.mark.parametrize("dockerfile", BUILT_FROM_LOCK, ids=lambda p: p.name)
def test_images_install_the_project_from_the_same_lock_as_the_venv(dockerfile):
    instructions = _instructions(dockerfile)
    runs = [arg for op, arg in instructions if op == "RUN"]
    assert "python /opt/tlp-lock/lock_install.py deps" in runs
    assert any("lock_install.py check" in run for run in runs), "the result must pass the pip check"
    assert all("--no-cache-dir" in run for run in runs if "pip install" in run)
    assert all("--no-deps" in run for run in runs if "pip install" in run), "only the lock's resolution installs"
    copies = " ".join(arg for op, arg in instructions if op == "COPY")
    assert "constraints.txt" in copies and "pyproject.toml" in copies
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt -e '.[dev]'" in makefile  # .venv uses the same lock


def test_the_dependency_layer_is_shared_by_the_cpu_and_training_images():
    """Identical instructions up to the dependency layer: on one base, Docker builds it once."""
    def prefix(path):
        instructions = _instructions(path)
        end = instructions.index(("RUN", "python /opt/tlp-lock/lock_install.py deps"))
        return [i for i in instructions[: end + 1] if i[0] != "ARG"]

    assert prefix(BUILT_FROM_LOCK[0]) == prefix(BUILT_FROM_LOCK[1])


def test_the_cpu_image_gets_tensorflow_cpu_and_the_training_image_tensorflow():
    cpu = " ".join(arg for op, arg in _instructions(CONTAINERS / "base.Dockerfile") if op == "RUN")
    train = " ".join(arg for op, arg in _instructions(CONTAINERS / "train.Dockerfile") if op == "RUN")
    assert "lock_install.py tensorflow cpu" in cpu and "lock_install.py tensorflow gpu" in train


def test_training_base_tag_matches_the_locked_tensorflow():
    assert _base_images(CONTAINERS / "train.Dockerfile") == [f"tensorflow/tensorflow:{_lock()['tensorflow']}-gpu"]


def test_the_serving_image_holds_only_what_serving_needs_from_the_same_lock():
    """Its own base (the CPU image's), only the serving dependencies at the lock's versions, no
    bytecode but for what tlp-serve loads, and tlp-serve as its entry point."""
    dockerfile = CONTAINERS / "serve.Dockerfile"
    assert _base_images(dockerfile) == _base_images(CONTAINERS / "base.Dockerfile")
    instructions = _instructions(dockerfile)
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "lock_install.py serving" in runs and "lock_install.py check serving" in runs
    assert "lock_install.py deps" not in runs
    assert "pip install --no-cache-dir --no-deps --no-compile ." in runs
    assert "compile_imported.py tlp.pipelines.serve tensorflow kserve" in runs
    assert ("ENTRYPOINT", '["tlp-serve"]') in instructions
    assert ("USER", "1000:1000") in instructions
    makefile = (ROOT / "Makefile").read_text()
    images = makefile[makefile.index("\nimages:"):makefile.index("\nstandin-base:")]
    assert "-f containers/serve.Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE)" in images


def test_serving_dependencies_are_what_the_server_imports_and_resolve_inside_the_lock():
    lock_install = _lock_install()
    serving = {lock_install.requirement_name(r) for r in lock_install.serving_dependencies()}
    assert {"tensorflow", "kserve", "pillow", "jinja2", "google-cloud-storage"} <= serving
    assert not serving & {"kfp", "mlflow", "apache-beam", "tf-keras", "scikit-learn", "google-cloud-aiplatform"}
    declared = {lock_install.requirement_name(r) for r in lock_install.declared_dependencies()}
    assert serving <= declared | {"numpy", "google-cloud-storage"}  # all in the lock, through tlp's own
    assert serving <= set(_lock())


def test_what_the_serving_image_leaves_out_goes_with_what_only_it_needs():
    """``needed`` follows requirements (an extra's only when asked for) and stops at what is left out."""
    lock_install = _lock_install()
    report = [
        {"name": "kserve", "version": "1", "requires_dist": ["uvicorn[standard]>=0.30", "aiohttp>=3", "numpy"]},
        {"name": "uvicorn", "version": "1", "requires_dist": [
            "h11", 'uvloop>=0.15; extra == "standard"', 'pytest; extra == "test"',
            'httptools; extra == "fast" or extra == "standard"']},
        {"name": "aiohttp", "version": "3", "requires_dist": ["multidict", "numpy"]},
        {"name": "h11", "version": "1"}, {"name": "uvloop", "version": "1"}, {"name": "pytest", "version": "9"},
        {"name": "httptools", "version": "1"},
        {"name": "multidict", "version": "6"}, {"name": "numpy", "version": "2"},
    ]
    kept = lock_install.needed(report, ["kserve"], frozenset({"aiohttp"}))
    # numpy stays: kserve needs it too; httptools comes with the standard extra named second in its marker.
    assert set(kept) == {"kserve", "uvicorn", "h11", "uvloop", "httptools", "numpy"}
    assert set(lock_install.needed(report, ["kserve"])) == set(kept) | {"aiohttp", "multidict"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_bases_are_build_args_with_exact_pinned_defaults(dockerfile):
    froms = [arg for op, arg in _instructions(dockerfile) if op == "FROM"]
    pattern = r"\$\{\w+\}( AS [\w-]+)?"  # a named stage (COPY --from) is a base too
    assert froms and all(re.fullmatch(pattern, arg) for arg in froms), "FROM ${ARG}: bases can be swapped"
    for image in _base_images(dockerfile):
        tag = image.rpartition(":")[2]
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{image}: the default base tag must be an exact version"


def test_makefile_defaults_equal_the_dockerfile_defaults():
    makefile = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) \?= (.*)$", makefile, re.M))
    assert variables["BASE_IMAGE"] == _arg_defaults(CONTAINERS / "base.Dockerfile")["BASE_IMAGE"]
    assert variables["TRAIN_BASE_IMAGE"] == _arg_defaults(CONTAINERS / "train.Dockerfile")["BASE_IMAGE"]
    assert variables["BAKE_WEIGHTS"] == _arg_defaults(CONTAINERS / "train.Dockerfile")["BAKE_WEIGHTS"] == "1"
    images = makefile[makefile.index("\nimages:"):makefile.index("\nstandin-base:")]
    for passed in ("BASE_IMAGE=$(BASE_IMAGE)", "BASE_IMAGE=$(TRAIN_BASE_IMAGE)", "BAKE_WEIGHTS=$(BAKE_WEIGHTS)"):
        assert f"--build-arg {passed}" in images
    assert "/" in variables["STANDIN_BASE"] and not variables["STANDIN_BASE"].startswith(("python", "tensorflow"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_non_root_user_unbuffered_output_labels(dockerfile):
    instructions = _instructions(dockerfile)
    users = [arg.strip() for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    labels = " ".join(arg for op, arg in instructions if op == "LABEL")
    for key in ("title", "source", "base.name"):
        assert f"org.opencontainers.image.{key}" in labels


@pytest.mark.parametrize("dockerfile", BUILT_FROM_LOCK, ids=lambda p: p.name)
def test_any_uid_has_a_writable_home(dockerfile):
    instructions = _instructions(dockerfile)
    assert "HOME=/home/tlp" in " ".join(arg for op, arg in instructions if op == "ENV")
    assert any("chmod 1777 /home/tlp" in arg for op, arg in instructions if op == "RUN")


def test_weights_are_baked_into_the_training_image_unless_turned_off():
    from tlp.pipelines.docker_runner import BAKED_WEIGHTS, BAKED_WEIGHTS_LABEL

    text = (CONTAINERS / "train.Dockerfile").read_text()
    assert "ARG BAKE_WEIGHTS=1" in text and "weights='imagenet'" in text
    base, alpha, size = BAKED_WEIGHTS
    assert f"tf_keras.applications.{base}(input_shape=({size}, {size}, 3)" in text and alpha == 1.0
    assert f'{BAKED_WEIGHTS_LABEL}="${{BAKE_WEIGHTS}}"' in text
    assert "chmod -R a+rwX /home/tlp/.keras" in text  # Keras ignores a cache it cannot write to


def test_build_context_is_small():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    assert {"!components/", "!pipelines/", "!constraints.txt", "!containers/lock_install.py"} <= set(ignore)


def test_what_the_images_leave_out_is_declared_and_the_rest_is_locked():
    lock_install = _lock_install()
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert lock_install.declared_dependencies() == declared
    pins = {lock_install.canonical(name): version for name, version in _lock().items()}
    assert set(lock_install.OMITTED) <= set(pins)
    assert all(lock_install.canonical(name) in pins for name in lock_install.ADDED)
    assert "tensorflow" in lock_install.OMITTED and "mlflow" in lock_install.OMITTED


def test_the_pip_check_accepts_only_what_was_left_out(monkeypatch, capsys):
    lock_install = _lock_install()
    tensorflow = _lock()["tensorflow"]
    outputs = {
        "check": "tlp 0.1.0 requires mlflow, which is not installed.\n"
                 "tf-keras 2.21.0 requires tensorflow, which is not installed.\n",
        "freeze": f"tensorflow-cpu=={tensorflow}\ntf-keras==2.21.0\n",
    }

    def fake_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 0, stdout=outputs[command[3]], stderr="")

    monkeypatch.setattr(lock_install.subprocess, "run", fake_run)
    lock_install.check()
    assert "left out on purpose: tlp 0.1.0 requires mlflow" in capsys.readouterr().out

    outputs["check"] += "kfp 2.17.3 requires click, which is not installed.\n"
    with pytest.raises(SystemExit, match="requires click"):
        lock_install.check()
    outputs["check"] = "tf-keras 2.21.0 requires tensorflow, which is not installed.\n"
    outputs["freeze"] = "tf-keras==2.21.0\n"
    with pytest.raises(SystemExit, match="tensorflow-cpu is not installed"):
        lock_install.check()


@pytest.mark.parametrize("name", ["python:3.11.7-slim-bookworm", "tensorflow/tensorflow:2.21.0-gpu", "debian"])
def test_the_standin_base_never_takes_an_official_name(name):
    result = subprocess.run([str(CONTAINERS / "standin-base.sh"), name], capture_output=True, text=True)
    assert result.returncode == 2 and "official image" in result.stderr


def test_compiled_tasks_use_the_configured_images(tmp_path):
    from kfp import compiler

    from tlp.components.lib.settings import ImageOptions
    from tlp.pipelines.training import create_pipeline

    package = tmp_path / "pipeline.yaml"
    images = ImageOptions(image_repo="us-docker.pkg.dev/p/tlp", image_tag="9.9.9")
    compiler.Compiler().compile(create_pipeline(images), str(package))
    spec = yaml.safe_load(package.read_text())
    executors = spec["deploymentSpec"]["executors"]
    images = {name.removeprefix("exec-"): e["container"]["image"] for name, e in executors.items()}
    assert images == {
        "data-fingerprint": "us-docker.pkg.dev/p/tlp/tlp:9.9.9",
        "data-prep": "us-docker.pkg.dev/p/tlp/tlp:9.9.9",
        "data-checks": "us-docker.pkg.dev/p/tlp/tlp:9.9.9",
        "feature-extraction": "us-docker.pkg.dev/p/tlp/tlp-train:9.9.9",
        "fine-tuning": "us-docker.pkg.dev/p/tlp/tlp-train:9.9.9",
        "evaluation": "us-docker.pkg.dev/p/tlp/tlp:9.9.9",
        "registration": "us-docker.pkg.dev/p/tlp/tlp:9.9.9",
    }
    # No component installs packages at run time: the image holds everything.
    for executor in executors.values():
        assert "pip install" not in " ".join(executor["container"].get("command", []))


def test_default_tag_is_the_project_version(tmp_path):
    from tlp.components.container_images import image_reference, project_version

    assert image_reference(kind="train") == f"tlp/tlp-train:{project_version()}"
    assert project_version() == "0.1.0"


# --- `--runner docker`: checks before the first container, and what every container gets ---


class FakeImage:
    def __init__(self, env=("HOME=/home/tlp",), labels=None):
        self.attrs = {"Config": {"Env": list(env)}}
        self.labels = labels or {}


class FakeEngine:
    """Just enough of docker-py's client for docker_runner: images, info, a probe container."""

    def __init__(self, images, probe_error=None, ping_error=None):
        self._images, self.probe_error, self.ping_error = images, probe_error, ping_error
        self.probes = []
        engine = self

        class Images:
            def get(self, reference):
                import docker

                if reference not in engine._images:
                    raise docker.errors.ImageNotFound(f"No such image: {reference}")
                return engine._images[reference]

        class Containers:
            def run(self, image, command, **kwargs):
                engine.probes.append((image, command, kwargs))
                if engine.probe_error:
                    raise engine.probe_error
                return b""

        self.images, self.containers = Images(), Containers()

    def ping(self):
        if self.ping_error:
            raise self.ping_error
        return True

    def info(self):
        return {"SecurityOptions": ["name=seccomp,profile=default"]}

    def close(self):
        pass


BUILT = {"tlp/tlp:0.1.0": FakeImage(), "tlp/tlp-train:0.1.0": FakeImage(labels={"tlp.baked-weights": "1"})}


def _config(tmp_path, image_repo="tlp", image_tag="", **changes):
    """What make_runner takes: the settings, the local-run options and the images."""
    from tlp.components.lib.settings import ImageOptions, LocalRunOptions, Settings

    root = tmp_path / "runs" / "pipeline-root"
    root.mkdir(parents=True, exist_ok=True)
    values = {"data": "sample:20", "weights": "none", "registry": f"sqlite:///{root}/registry.db"}
    settings = Settings.from_values({**values, **changes}, check=False)
    return settings, LocalRunOptions(output_dir=str(tmp_path / "runs")), ImageOptions(image_repo, image_tag)


@pytest.fixture
def engine(monkeypatch):
    import docker

    def install(fake):
        monkeypatch.setattr(docker, "from_env", lambda: fake)
        return fake

    return install


def _one_sentence(message: str) -> bool:
    return message.endswith(".") and ". " not in message.replace("e.g. ", "").replace("i.e. ", "")


def test_containers_run_as_the_invoking_user_without_network(tmp_path, engine):
    import os

    from tlp.pipelines import docker_runner

    fake = engine(FakeEngine(BUILT))
    runner = docker_runner.make_runner(*_config(tmp_path))
    user = f"{os.getuid()}:{os.getgid()}"
    assert runner.container_run_args["user"] == user
    assert runner.container_run_args["network_mode"] == "none"
    assert set(runner.container_run_args["environment"]) == {"USER", "LOGNAME"}
    # The mount was probed the way kfp mounts it, as that user.
    (image, _command, kwargs), = fake.probes
    root = str(tmp_path / "runs" / "pipeline-root")
    assert image == "tlp/tlp:0.1.0" and kwargs["user"] == user and kwargs["volumes"] == {
        root: {"bind": root, "mode": "rw"}
    }


@pytest.mark.parametrize("changes, reason", [
    ({"data": "tfds:cats_vs_dogs"}, "downloaded by the data-prep container"),
    ({"registry": "http://mlflow:5000"}, "is a server"),
    ({"weights": "imagenet", "image_size": 96}, "not baked into the training image"),
])
def test_containers_get_the_network_only_when_the_settings_need_it(tmp_path, engine, capsys, changes, reason):
    from tlp.pipelines import docker_runner

    engine(FakeEngine(BUILT))
    runner = docker_runner.make_runner(*_config(tmp_path, **changes))
    assert "network_mode" not in runner.container_run_args
    assert reason in capsys.readouterr().out


def test_baked_weights_keep_the_network_off(tmp_path, engine):
    from tlp.pipelines import docker_runner

    engine(FakeEngine(BUILT))
    runner = docker_runner.make_runner(*_config(tmp_path, weights="imagenet", image_size=160, alpha=1.0))
    assert runner.container_run_args["network_mode"] == "none"
    unbaked = {**BUILT, "tlp/tlp-train:0.1.0": FakeImage(labels={"tlp.baked-weights": "0"})}
    engine(FakeEngine(unbaked))
    runner = docker_runner.make_runner(*_config(tmp_path, weights="imagenet", image_size=160, alpha=1.0))
    assert "network_mode" not in runner.container_run_args


def test_a_missing_image_is_named_before_anything_starts(tmp_path, engine):
    from tlp.components.lib.specs import ConfigError
    from tlp.pipelines import docker_runner

    fake = engine(FakeEngine({"tlp/tlp:0.1.0": FakeImage()}))
    with pytest.raises(ConfigError, match=r"tlp/tlp-train:0\.1\.0, which is not on this machine.*make images") as error:
        docker_runner.make_runner(*_config(tmp_path))
    assert _one_sentence(str(error.value)) and fake.probes == []
    engine(FakeEngine({"tlp/tlp:0.1.0": FakeImage(env=("PATH=/usr/bin",)), "tlp/tlp-train:0.1.0": FakeImage()}))
    with pytest.raises(ConfigError, match="predates containers that run as the invoking user") as error:
        docker_runner.make_runner(*_config(tmp_path))
    assert _one_sentence(str(error.value))


def test_images_of_another_repository_are_the_ones_checked(tmp_path, engine):
    from tlp.components.lib.specs import ConfigError
    from tlp.pipelines import docker_runner

    engine(FakeEngine(BUILT))
    with pytest.raises(ConfigError, match=r"us-docker\.pkg\.dev/p/tlp/tlp:2\.0\.0"):
        docker_runner.make_runner(*_config(tmp_path, image_repo="us-docker.pkg.dev/p/tlp", image_tag="2.0.0"))


@pytest.mark.parametrize("problem, expected", [
    ("Error while fetching server API version: ('Connection aborted.', FileNotFoundError(2, 'No such file'))",
     "needs a running Docker engine and none answers"),
    ("Error while fetching server API version: ('Connection aborted.', PermissionError(13, 'Permission denied'))",
     "permission denied"),
])
def test_no_engine_in_one_sentence(tmp_path, engine, problem, expected):
    import docker

    from tlp.components.lib.specs import ConfigError
    from tlp.pipelines import docker_runner

    engine(FakeEngine(BUILT, ping_error=docker.errors.DockerException(problem)))
    with pytest.raises(ConfigError, match=expected) as error:
        docker_runner.make_runner(*_config(tmp_path))
    assert _one_sentence(str(error.value))


def test_an_unwritable_mount_is_reported_before_the_run(tmp_path, engine):
    import docker

    from tlp.components.lib.specs import ConfigError
    from tlp.pipelines import docker_runner

    refused = docker.errors.ContainerError(
        "probe", 1, "sh -c touch", "tlp/tlp:0.1.0", b"touch: cannot touch '/x/.tlp-mount-probe': Permission denied\n"
    )
    engine(FakeEngine(BUILT, probe_error=refused))
    with pytest.raises(ConfigError, match="cannot write to the pipeline root .*Permission denied") as error:
        docker_runner.make_runner(*_config(tmp_path))
    assert _one_sentence(str(error.value))


def test_dataflow_workers_run_the_cpu_image_with_the_beam_harness_of_the_locked_sdk():
    """The workers' image is the CPU image (one lock) plus /opt/apache/beam/boot from Beam's SDK
    image of exactly the locked apache-beam; its entry point is the boot program Dataflow starts."""
    from tlp.components.lib.version import image_reference

    dockerfile = CONTAINERS / "dataflow.Dockerfile"
    steps = _instructions(dockerfile)
    defaults = _arg_defaults(dockerfile)
    assert defaults["BEAM_SDK_IMAGE"] == f"apache/beam_python3.11_sdk:{_lock()['apache-beam']}"
    assert defaults["CPU_IMAGE"] == image_reference(kind="light")
    assert ("COPY", "--from=beam-sdk /opt/apache/beam /opt/apache/beam") in steps
    assert ("RUN", "python /opt/tlp-lock/lock_install.py check") in steps
    assert steps[-1] == ("ENTRYPOINT", '["/opt/apache/beam/boot"]')
    makefile = (ROOT / "Makefile").read_text()
    assert f"BEAM_SDK_IMAGE ?= {defaults['BEAM_SDK_IMAGE']}" in makefile
    assert "-f containers/dataflow.Dockerfile" in makefile and "tlp-dataflow:$(IMAGE_TAG)" in makefile


# --- `--runner docker --devices gpu`: the host's GPUs in the containers ---


class FakeGpuEngine(FakeEngine):
    """A FakeEngine whose containers.create records the GPU probe; ``refuse`` is the engine's
    answer to starting a container with GPUs on a machine without a GPU runtime."""

    def __init__(self, images, refuse=None):
        super().__init__(images)
        self.created, engine = [], self
        run = self.containers.run

        class Container:
            def start(self):
                if refuse:
                    raise refuse

            def wait(self, timeout=None):
                return {"StatusCode": 0}

            def remove(self, force=False):
                engine.removed = True

        class Containers:
            def create(self, image, command, **kwargs):
                engine.created.append((image, command, kwargs))
                return Container()

        Containers.run = staticmethod(run)
        self.containers = Containers()


def _create_request(runner, image="tlp/tlp-train:0.1.0") -> dict:
    """The HostConfig docker-py sends to the engine when kfp's DockerRunner starts a step with
    these arguments (kfp's run_docker_container: image, command, volumes, then the runner's)."""
    from docker.models.containers import _create_container_args

    created = _create_container_args({
        "image": image, "command": ["python", "-m", "kfp.dsl.executor_main"], "detach": True, "version": "1.43",
        "volumes": {"/x": {"bind": "/x", "mode": "rw"}}, **runner.container_run_args,
    })
    return dict(created["host_config"])


@pytest.mark.parametrize("devices, count", [("gpu", -1), ("gpu:2", 2)])
def test_devices_gpu_hands_the_hosts_gpus_to_the_containers(tmp_path, engine, capsys, devices, count):
    from tlp.pipelines import docker_runner

    fake = engine(FakeGpuEngine(BUILT))
    runner = docker_runner.make_runner(*_config(tmp_path, devices=devices))
    host_config = _create_request(runner)
    assert host_config["DeviceRequests"] == [
        {"Driver": "", "Count": count, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    # The GPUs were asked for once before the run, in the training image, as the invoking user.
    (image, _command, kwargs), = fake.created
    assert image == "tlp/tlp-train:0.1.0" and kwargs["device_requests"] == runner.container_run_args["device_requests"]
    assert fake.removed
    assert f"with the host's GPUs (--devices {devices})" in capsys.readouterr().out


@pytest.mark.parametrize("devices", ["auto", "cpu", "cpu:2"])
def test_other_devices_give_the_containers_no_gpus(tmp_path, engine, devices):
    from tlp.pipelines import docker_runner

    fake = engine(FakeGpuEngine(BUILT))
    runner = docker_runner.make_runner(*_config(tmp_path, devices=devices))
    assert "DeviceRequests" not in _create_request(runner) and fake.created == []


def test_an_engine_without_gpus_is_named_before_the_run(tmp_path, engine):
    import docker

    from tlp.components.lib.specs import ConfigError
    from tlp.pipelines import docker_runner

    refused = docker.errors.APIError(
        "500 Server Error", explanation='could not select device driver "" with capabilities: [[gpu]]'
    )
    fake = engine(FakeGpuEngine(BUILT, refuse=refused))
    with pytest.raises(ConfigError, match="NVIDIA Container Toolkit") as error:
        docker_runner.make_runner(*_config(tmp_path, devices="gpu"))
    assert "could not select device driver" in str(error.value) and _one_sentence(str(error.value))
    assert fake.removed  # the refused probe container is not left behind


def test_the_litert_interpreter_is_in_the_images_that_export_not_in_the_serving_image():
    """The deps layer (CPU and training images, which run the LiteRT export step) installs every declared
    dependency but the OMITTED; the serving image installs only the serving dependencies."""
    lock_install = _lock_install()
    declared = {lock_install.requirement_name(r) for r in lock_install.declared_dependencies()}
    serving = {lock_install.requirement_name(r) for r in lock_install.serving_dependencies()}
    assert "ai-edge-litert" in declared and "ai-edge-litert" not in lock_install.OMITTED
    assert _lock()["ai-edge-litert"] == "2.3.0"
    assert "ai-edge-litert" not in serving
