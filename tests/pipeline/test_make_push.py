"""`make push` builds what it pushes and names what it skipped: the real Makefile recipes, run by
make against a small `docker` stand-in on PATH that keeps a list of the images it has (a build
adds one, `pull` of Beam's SDK image works only when the test says Docker Hub is reachable) and
logs every call."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO = "us-docker.pkg.dev/tlp-test/tlp"
NAMES = ("tlp", "tlp-train", "tlp-serve", "tlp-dataflow")

# A docker client for the recipes: build -t REF adds REF to the images it has, inspect/ls answer
# from them, pull succeeds only for PULLABLE, push succeeds; each call is appended to the log.
FAKE_DOCKER = r"""#!/bin/bash
echo "$*" >> "$DOCKER_LOG"
case "$1 $2" in
  "image inspect") ref="${@: -1}"; grep -qxF "$ref" "$DOCKER_IMAGES" ;;
  "image ls") echo 1MB ;;
  "pull "*) [ -n "$PULLABLE" ] && [ "$2" = "$PULLABLE" ] && echo "$2" >> "$DOCKER_IMAGES" ;;
  "build "*) while [ $# -gt 0 ]; do [ "$1" = -t ] && echo "$2" >> "$DOCKER_IMAGES"; shift; done ;;
  "push "*) grep -qxF "$2" "$DOCKER_IMAGES" ;;
  *) exit 0 ;;
esac
"""


def _make_push(tmp_path, pullable: str = "", already: tuple = ()):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    log, images = tmp_path / "docker.log", tmp_path / "images"
    images.write_text("".join(f"{ref}\n" for ref in already))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_LOG": str(log),
           "DOCKER_IMAGES": str(images), "PULLABLE": pullable}
    done = subprocess.run(
        ["make", "--no-print-directory", "push", f"IMAGE_REPO={REPO}", "IMAGE_TAG=9.9.9",
         f"IMAGES_BUILT={tmp_path / 'built.txt'}"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls


def _pushed(calls):
    return [call.split()[1] for call in calls if call.startswith("push ")]


def _built(calls):
    return [call.split(" -t ")[1].split()[0] for call in calls if call.startswith("build ")]


def test_push_builds_every_image_then_pushes_those_it_built(tmp_path):
    done, calls = _make_push(tmp_path, pullable="apache/beam_python3.11_sdk:2.77.0")
    assert done.returncode == 0, done.stderr
    refs = [f"{REPO}/{name}:9.9.9" for name in NAMES]
    assert _built(calls) == refs
    assert _pushed(calls) == refs
    assert calls.index(f"push {refs[0]}") > max(i for i, call in enumerate(calls) if call.startswith("build "))
    assert "SKIPPED" not in done.stdout


@pytest.mark.parametrize("stale", [False, True])
def test_push_without_beams_sdk_image_pushes_three_and_names_the_skipped_one(tmp_path, stale):
    dataflow = f"{REPO}/tlp-dataflow:9.9.9"
    # stale: an older tlp-dataflow of the same tag is on the machine; it was not built now, so not pushed.
    done, calls = _make_push(tmp_path, already=(dataflow,) if stale else ())
    assert done.returncode == 0, done.stderr
    assert _pushed(calls) == [f"{REPO}/{name}:9.9.9" for name in NAMES[:3]]
    assert dataflow not in _built(calls)
    [skipped] = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED push")]
    assert dataflow in skipped and "--data-prep-runner dataflow" in skipped
