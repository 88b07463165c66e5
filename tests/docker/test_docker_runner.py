"""`tlp run --runner docker` for real: every step in its image, as the invoking host user, with
networking off; outputs owned by that user; the registered model serves.

Before the fix, the non-root case failed at the first step: the images ran as uid 1000, which
cannot write into a pipeline root that belongs to anybody else ("PermissionError: [Errno 13]
Permission denied: '.../pipeline-root/transfer-learning-...'")."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import time

import pytest

from tests.docker.conftest import unavailable
from tests.docker.engine_proxy import RecordingEngineProxy
from tlp.components.lib import steps as catalogue

pytestmark = pytest.mark.docker

# kfp's --function_to_execute -> the image it must run in, from the one step catalogue.
STEPS = {step.function: step.image for step in catalogue.STEPS}
TEST_SIZE = [
    "--data", "sample:20", "--image-size", "32", "--alpha", "0.35", "--weights", "none",
    "--epochs", "1", "--fine-tune-epochs", "1", "--batch-size", "8",
    # The gate is not under test here; registration is.
    "--max-gap", "1", "--min-accuracy", "0",
]
TLP = os.path.join(os.path.dirname(sys.executable), "tlp")
# A tlp the other user can execute: .venv's Python may live where only root can read it (e.g. a
# pyenv under /root), so .ci/docker-tier.sh installs one for that user from Debian's python3.
USER_TLP = os.environ.get("TLP_USER_TLP", TLP)


def containers_made(creates: list[dict], root: str) -> list[dict]:
    """What each container under ``root`` (a bind mount from it) was made with, from the create
    requests the engine received: its step, image, user, network mode and HOME/USER."""
    made = []
    for body in creates:
        binds = body.get("HostConfig", {}).get("Binds") or []
        if not any(bind.split(":")[0].startswith(root) for bind in binds):
            continue  # another job's container on a shared engine
        command = body.get("Cmd") or []
        flag = "--function_to_execute"
        step = command[command.index(flag) + 1] if flag in command else None
        if step is None and any(".tlp-mount-probe" in part for part in command):
            step = "mount-probe"  # tlp's check before the run that the user can write the mount
        made.append({
            "step": step,
            "image": body["Image"],
            "user": body.get("User", ""),
            "network": body.get("HostConfig", {}).get("NetworkMode"),
            "env": [e for e in body.get("Env") or [] if e.startswith(("HOME=", "USER="))],
        })
    return made


def run_as(user, command, cwd, timeout=1200, docker_host=None):
    """Runs ``command`` as ``user`` (a pwd entry) with that user's HOME; the docker socket's group
    is added, as membership of the docker group would."""
    env = {
        "PATH": os.path.dirname(command[0]) + ":/usr/local/bin:/usr/bin:/bin",
        "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
        "TF_CPP_MIN_LOG_LEVEL": "2", "LANG": "C.UTF-8",
    }
    if docker_host or "DOCKER_HOST" in os.environ:
        env["DOCKER_HOST"] = docker_host or os.environ["DOCKER_HOST"]
    kwargs = {}
    if os.geteuid() == 0 and user.pw_uid != 0:
        socket = "/var/run/docker.sock"
        extra = [os.stat(socket).st_gid] if os.path.exists(socket) else []
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": extra}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def not_owned_by(top: str, uid: int, gid: int) -> list[str]:
    wrong = []
    for root, dirs, files in os.walk(top):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            info = os.lstat(name)
            if (info.st_uid, info.st_gid) != (uid, gid):
                wrong.append(f"{name} ({info.st_uid}:{info.st_gid})")
    return sorted(set(wrong))


def run_pipeline_in_containers(docker_client, images, user, workdir):
    tlp = TLP if user.pw_uid == os.geteuid() else USER_TLP
    try:
        usable = run_as(user, [tlp, "--help"], workdir, timeout=120)
        problem = usable.stderr.strip()[-300:] if usable.returncode else None
    except OSError as error:
        problem = str(error)
    if problem:
        unavailable(f"uid {user.pw_uid} cannot run {tlp} ({problem}); set TLP_USER_TLP to a tlp that user "
                    "can run, as .ci/docker-tier.sh does")
    out = os.path.join(workdir, "runs")
    started = time.monotonic()
    with RecordingEngineProxy() as engine:
        result = run_as(user, [tlp, "run", "--runner", "docker", "--output-dir", out,
                               "--summary-json", os.path.join(workdir, "summary.json"), *TEST_SIZE], workdir,
                        docker_host=engine.docker_host)
    seen = containers_made(engine.creates, workdir)
    seconds = time.monotonic() - started
    assert result.returncode == 0, (
        f"tlp run --runner docker as uid {user.pw_uid} failed:\n{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
    )
    print(f"\ntlp run --runner docker as {user.pw_name} (uid {user.pw_uid}): {seconds:.0f} s")
    for container in seen:
        print(f"  {json.dumps(container)}")

    # Every step ran in a container of its own image (kfp's DockerRunner runs nothing in .venv).
    assert sorted(c["step"] for c in seen) == sorted([*STEPS, "mount-probe"]), seen
    for container in seen:
        assert container["image"] == images[STEPS.get(container["step"], "light")], container
        # ... as the invoking user, with networking off.
        assert container["user"] == f"{user.pw_uid}:{user.pw_gid}", container
        assert container["network"] == "none", container

    # Nothing in the output directory belongs to another uid.
    assert not_owned_by(workdir, user.pw_uid, user.pw_gid) == []

    # The registered model serves, from the registry the containers wrote.
    with open(os.path.join(workdir, "summary.json")) as handle:
        summary = json.load(handle)
    registered = summary["registered"]
    assert registered and registered["version"] == "1", summary
    image_path = os.path.join(workdir, "probe.png")
    from PIL import Image

    Image.new("RGB", (48, 40), (220, 120, 40)).save(image_path)
    os.chown(image_path, user.pw_uid, user.pw_gid)
    predicted = run_as(user, [tlp, "predict", f"{registered['name']}@champion", image_path,
                              "--registry", registered["registry"], "--json"], workdir, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-4000:]
    row = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert row["label"] in summary["data"]["class_names"], row
    assert not_owned_by(workdir, user.pw_uid, user.pw_gid) == []


def test_pipeline_runs_in_the_images_as_a_user_other_than_1000(docker_client, images, other_user, workdir_for):
    assert other_user.pw_uid not in (0, 1000)
    run_pipeline_in_containers(docker_client, images, other_user, workdir_for(other_user))


def test_pipeline_runs_in_the_images_as_root(docker_client, images, workdir_for):
    if os.geteuid() != 0:
        pytest.skip("the root case runs as root")
    run_pipeline_in_containers(docker_client, images, pwd.getpwuid(0), workdir_for(pwd.getpwuid(0)))


@pytest.mark.parametrize("kind", ["light", "train"])
def test_an_unknown_uid_gets_a_writable_home_and_the_installed_project(docker_client, images, kind):
    """Any uid, even one without an /etc/passwd entry, can write HOME and import the project."""
    script = (
        "import os, tempfile; tempfile.NamedTemporaryFile(dir=os.environ['HOME']).close(); "
        "import tlp.components.lib.model as m, tensorflow as tf; print(os.environ['HOME'], tf.__version__, m.__file__)"
    )
    output = docker_client.containers.run(
        images[kind], ["python", "-c", script], user="54321:54321", network_mode="none", remove=True
    ).decode()
    assert output.startswith("/home/tlp ") and ".venv" not in output


def test_images_were_not_left_world_writable_where_code_lives(docker_client, images):
    """A writable HOME for every uid, but the installed code stays root's."""
    output = docker_client.containers.run(
        images["light"], ["python", "-c", "import tlp.components, os; print(os.path.dirname(tlp.components.__file__))"],
        user="54321:54321", network_mode="none", remove=True,
    ).decode().strip()
    mode = docker_client.containers.run(
        images["light"], ["stat", "-c", "%a %u", output], network_mode="none", remove=True
    ).decode().split()
    assert not int(mode[0], 8) & stat.S_IWOTH and mode[1] == "0"


def test_devices_gpu_reaches_the_engine_as_a_gpu_request(docker_client, images, workdir_for):
    """`--devices gpu`: the create requests the engine receives ask for every GPU (Count -1,
    capability gpu). On an engine without a GPU runtime (CI here) tlp stops before the first step,
    in one sentence; on one with GPUs every step's container gets them."""
    me = pwd.getpwuid(os.geteuid())
    workdir = workdir_for(me)
    with RecordingEngineProxy() as engine:
        result = run_as(me, [TLP, "run", "--runner", "docker", "--devices", "gpu", "--output-dir",
                             os.path.join(workdir, "runs"), *TEST_SIZE], workdir, docker_host=engine.docker_host)
    asking = [body for body in engine.creates if body.get("HostConfig", {}).get("DeviceRequests")]
    assert asking, f"no create request asked for GPUs:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    for body in asking:
        requests = body["HostConfig"]["DeviceRequests"]
        assert [(r["Count"], r["Capabilities"]) for r in requests] == [(-1, [["gpu"]])], requests
    steps = [body for body in engine.creates if "--function_to_execute" in (body.get("Cmd") or [])]
    if result.returncode == 2:  # no GPU runtime on this engine: refused before any step ran
        assert "NVIDIA Container Toolkit" in result.stderr, result.stderr[-3000:]
        assert steps == []
    else:
        assert result.returncode == 0, result.stderr[-4000:]
        assert steps and all(body in asking for body in steps)
