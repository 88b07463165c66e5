"""The images and the local environment cannot drift: one lock, exact base tags, non-root,
and every compiled task on the configured image."""

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
    assert {p.name for p in DOCKERFILES} == {"base.Dockerfile", "train.Dockerfile", "serve.Dockerfile"}


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


def test_serving_image_is_the_cpu_image_of_this_version():
    from tlp.components.container_images import image_reference

    assert _base_images(CONTAINERS / "serve.Dockerfile") == [image_reference(kind="light")]
    assert ("ENTRYPOINT", '["tlp", "serve"]') in _instructions(CONTAINERS / "serve.Dockerfile")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_bases_are_build_args_with_exact_pinned_defaults(dockerfile):
    froms = [arg for op, arg in _instructions(dockerfile) if op == "FROM"]
    assert froms and all(re.fullmatch(r"\$\{\w+\}", arg) for arg in froms), "FROM ${ARG}: bases can be swapped"
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
    text = (CONTAINERS / "train.Dockerfile").read_text()
    assert "ARG BAKE_WEIGHTS=1" in text and "weights='imagenet'" in text
    assert 'tlp.baked-weights="${BAKE_WEIGHTS}"' in text
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

    from tlp.pipelines.training import create_pipeline

    package = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(create_pipeline("us-docker.pkg.dev/p/tlp", "9.9.9"), str(package))
    spec = yaml.safe_load(package.read_text())
    executors = spec["deploymentSpec"]["executors"]
    images = {name.removeprefix("exec-"): e["container"]["image"] for name, e in executors.items()}
    assert images == {
        "data-prep": "us-docker.pkg.dev/p/tlp/tlp:9.9.9",
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
