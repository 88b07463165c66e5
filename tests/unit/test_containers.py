"""The images and the local environment cannot drift: one lock, exact base tags, non-root,
and every compiled task on the configured image."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "containers").glob("*.Dockerfile"))


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
    assert {p.name for p in DOCKERFILES} == {"train.Dockerfile", "base.Dockerfile", "serve.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_the_project_from_the_same_lock_as_the_venv(dockerfile):
    runs = [arg for op, arg in _instructions(dockerfile) if op == "RUN" and "pip install" in arg]
    assert runs, "no pip install"
    assert all("-c constraints.txt" in run and "--no-cache-dir" in run for run in runs)
    copies = " ".join(arg for op, arg in _instructions(dockerfile) if op == "COPY")
    assert "constraints.txt" in copies and "pyproject.toml" in copies
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt -e '.[dev]'" in makefile  # .venv uses the same lock


def test_training_base_tag_matches_the_locked_tensorflow():
    froms = [arg for op, arg in _instructions(ROOT / "containers" / "train.Dockerfile") if op == "FROM"]
    assert froms == [f"tensorflow/tensorflow:{_lock()['tensorflow']}-gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_exact_base_tag_non_root_user_and_unbuffered_output(dockerfile):
    instructions = _instructions(dockerfile)
    for op, arg in instructions:
        if op == "FROM":
            image, _, tag = arg.split()[0].partition(":")
            assert re.match(r"\d+\.\d+\.\d+", tag), f"{arg}: base tag must be an exact version"
    users = [arg.strip() for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    labels = " ".join(arg for op, arg in instructions if op == "LABEL")
    assert "org.opencontainers.image.title" in labels and "org.opencontainers.image.source" in labels


def test_weights_are_baked_into_the_training_image_unless_turned_off():
    text = (ROOT / "containers" / "train.Dockerfile").read_text()
    assert "ARG BAKE_WEIGHTS=1" in text and "weights='imagenet'" in text


def test_build_context_is_small():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[1:2] == ["*"] or "*" in ignore
    assert "!components/" in ignore and "!constraints.txt" in ignore


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
