"""The docker tier: real containers from the built images, on a real Docker engine.

Opt-in: `TLP_DOCKER_TESTS=1` (set by .ci/docker-tier.sh, after it built the images) runs them,
and then a missing engine or image is a failure, so CI cannot pass by skipping. Without it they
are skipped, so `make test` stays what it was on any machine, with or without Docker (these
take about 5 minutes: two whole pipeline runs in containers)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

from tlp.components.container_images import image_reference

REPO = os.environ.get("TLP_IMAGE_REPO", "tlp")
TAG = os.environ.get("TLP_IMAGE_TAG") or None
IMAGES = {
    "light": image_reference(REPO, TAG, kind="light"),
    "train": image_reference(REPO, TAG, kind="train"),
}
SERVE_IMAGE = f"{REPO}/tlp-serve:{IMAGES['light'].rsplit(':', 1)[1]}"


ENABLED = os.environ.get("TLP_DOCKER_TESTS") == "1"


def unavailable(reason: str):
    if ENABLED:
        pytest.fail(f"TLP_DOCKER_TESTS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client():
    import docker

    if not ENABLED:
        pytest.skip("the docker tier runs with TLP_DOCKER_TESTS=1 (.ci/docker-tier.sh sets it)")

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        unavailable(f"no Docker engine answers ({error})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def images(docker_client):
    import docker

    for ref in IMAGES.values():
        try:
            docker_client.images.get(ref)
        except docker.errors.ImageNotFound:
            unavailable(f"image {ref} is not built (make images, or make images-offline)")
    return IMAGES


@pytest.fixture(scope="session")
def other_user():
    """A host user whose uid is neither 0 nor the images' 1000, created with useradd when we are
    root (and removed afterwards); otherwise the current user, if that uid is not 1000."""
    if os.geteuid() != 0:
        if os.getuid() == 1000:
            unavailable("the uid case needs root (to create a user) or a uid other than 1000")
        entry = pwd.getpwuid(os.getuid())
        yield entry
        return
    uid = 4321
    while True:
        try:
            pwd.getpwuid(uid)
            uid += 1
        except KeyError:
            break
    name = f"tlp-ci-{uid}"
    subprocess.run(["useradd", "--uid", str(uid), "--user-group", "--create-home", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


@pytest.fixture
def workdir_for():
    """A fresh directory under /tmp owned by a given user (pytest's tmp_path is private to root)."""
    made = []

    def make(user) -> str:
        path = tempfile.mkdtemp(prefix="tlp-docker-", dir="/tmp")
        os.chown(path, user.pw_uid, user.pw_gid)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
