"""The local half of "docs tested like code": every command in a ```bash block of the Get started
pages and the how-to guides (tests/docs_blocks.py) is run, as typed, by a test. The cloud
commands run against the stand-in (tests/cloud/test_docs_commands.py); here:

- every command is of a kind some test runs (`tlp`, `make`, a shell variable, the serving page's
  script), or is listed in NOT_RUN with its reason;
- `make` lines: `make -n` checks each for every target, and the slow walk runs `make install` and
  `make run` for real (the `tlp run` line `make -n` prints, in a scratch folder), and only `make -n`
  for the targets that need Docker or a GPU;
- the slow walk goes through the pages in a reader's order in one scratch folder (photos, a
  registry that fills up), running each `tlp` command through the installed script, and the
  serving page's block as a bash script (on a free port instead of 8080)."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys

import pytest

from tests import docs_blocks

ROOT = docs_blocks.ROOT
BIN = os.path.dirname(sys.executable)
# Pages whose blocks run as one bash script, in order (a server started in the background in one
# block, curl against it and `kill %1` in the next).
SCRIPT_PAGES = {"how-to/serve.md"}
# Commands no test runs here, and why; the pages say so too.
NOT_RUN = {
    "gcloud": "changes a real Google Cloud project; there is no gcloud or Google Cloud here",
    "tlp-docker": "needs a Docker engine and the images: the docker tier (tests/docker/test_docker_runner.py) runs "
                  "`tlp run --runner docker` with these settings (and --batch-size 8) as two users",
}
# make targets the walk runs only as `make -n`: they need Docker, a registry to push to, or a GPU.
DRY_TARGETS = {"images": "needs Docker (the docker tier builds the images)", "push": "pushes to a real registry",
               "images-offline": "needs Docker and root", "install-cuda": "downloads NVIDIA's CUDA wheels for a GPU"}
# A reader's order: the first run registers sample/1 and sample/2, which later pages use.
ORDER = ["get-started/install.md", "get-started/your-photos.md", "how-to/one-step.md", "how-to/batch-predict.md",
         "how-to/serve.md", "how-to/drift.md", "how-to/promote-rollback.md", "how-to/tune.md", "how-to/on-device.md"]
# Exit codes the pages document as a result rather than a failure.
ACCEPTED = {"drift": {0, 4}, "export": {0, 5}}


def _local_commands():
    for page, index, block in docs_blocks.all_blocks():
        for command in docs_blocks.commands(block):
            yield page, index, command


def test_every_command_of_the_docs_is_one_a_test_runs_or_says_why_not():
    kinds = {}
    for page, _index, command in _local_commands():
        kind = docs_blocks.kind(command)
        kinds.setdefault(kind, []).append(f"{page}: {command}")
        if page in SCRIPT_PAGES:
            continue
        assert kind in ("tlp", "tlp-cloud", "make", "assign") or kind in NOT_RUN, (
            f"{page}: `{command}`: no test runs a `{kind}` command; run it from tests/pipeline/test_docs_commands.py "
            "or move it to a ```text block and say on the page why it is not run")
    assert len(kinds.get("tlp", [])) >= 12 and len(kinds.get("tlp-cloud", [])) >= 8, kinds
    pages = {page for page, _, _ in docs_blocks.all_blocks()}
    assert pages >= set(ORDER) | {"get-started/first-vertex-run.md", "how-to/docker-runner.md",
                                  "how-to/local-gpu.md", "how-to/schedule.md", "how-to/deploy.md"}, pages


def test_every_make_line_of_the_docs_is_a_target_make_knows():
    for page, _index, command in _local_commands():
        if docs_blocks.kind(command) != "make":
            continue
        words = docs_blocks.fill(command, {})
        # --no-print-directory: under `make test` a nested make would add "Entering/Leaving directory" lines.
        done = subprocess.run(["make", "--no-print-directory", "-n", *words[1:]], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert done.returncode == 0, f"{page}: `{command}`: {done.stderr}"
        if words[1] == "run":
            assert f"tlp run {_run_args(words)}".strip() in done.stdout, done.stdout


def _run_args(words: list[str]) -> str:
    given = [word.split("=", 1)[1] for word in words[2:] if word.startswith("RUN_ARGS=")]
    return given[0] if given else ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _workspace(top) -> None:
    """What a reader has next to them: a photo folder of two classes, a photo, new photos."""
    from PIL import Image

    def photo(path, colour, shape):
        image = Image.new("RGB", (96, 80), tuple(c // 3 for c in colour))
        from PIL import ImageDraw

        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)((20, 15, 70, 65), fill=colour)
        image.save(path, quality=90)

    for name, colour, shape in (("cats", (230, 120, 40), "circle"), ("dogs", (40, 110, 230), "square")):
        os.makedirs(top / "photos" / name)
        for number in range(30):
            shade = tuple(min(255, c + 3 * number) for c in colour)
            photo(top / "photos" / name / f"IMG_{number:04d}.jpg", shade, shape)
    photo(top / "cat.jpg", (230, 120, 40), "circle")
    os.makedirs(top / "new-photos")
    for number in range(12):
        photo(top / "new-photos" / f"{number}.jpg", (200 - 5 * number, 120, 60), "circle")


def _run(words: list[str], cwd, page: str, command: str, timeout: int = 1800) -> str:
    """Runs the command in a session of its own; whatever it left running (a server a failed
    script did not stop) is ended with it."""
    import signal

    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(words, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{page}: `{command}` did not end within {timeout} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    accepted = ACCEPTED.get(words[1] if words[0].endswith("tlp") else "", {0})
    assert process.returncode in accepted, (
        f"{page}: `{command}` exited {process.returncode}:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return stdout


@pytest.mark.slow
def test_a_reader_walks_the_local_pages_in_order(tmp_path):
    _workspace(tmp_path)
    blocks = {}
    for page, _index, block in docs_blocks.all_blocks():
        blocks.setdefault(page, []).append(block)
    ran = []
    for page in ORDER:
        if page in SCRIPT_PAGES:
            port = str(_free_port())
            script = re.sub(r"\b8080\b", port, "\n".join(blocks[page]))
            _run(["bash", "-e", "-c", script], tmp_path, page, script, timeout=600)
            ran.append(f"{page}: its blocks, as one script on port {port}")
            continue
        for block in blocks[page]:
            for command in docs_blocks.commands(block):
                kind = docs_blocks.kind(command)
                words = docs_blocks.fill(command, {})
                if kind == "make":
                    target = words[1]
                    if target in DRY_TARGETS:
                        continue  # checked by `make -n` above
                    if target == "run":
                        printed = subprocess.run(["make", "--no-print-directory", "-n", *words[1:]],
                                                 capture_output=True, text=True, cwd=ROOT,
                                                 timeout=60).stdout.strip().splitlines()[-1]
                        words = shlex.split(printed)
                        words[0] = os.path.join(BIN, "tlp")
                        _run(words, tmp_path, page, command)
                    else:
                        _run(["make", *words[1:]], ROOT, page, command)
                elif kind == "tlp":
                    _run([os.path.join(BIN, "tlp"), *words[1:]], tmp_path, page, command)
                else:
                    continue
                ran.append(f"{page}: {command}")
    print("\n".join(ran))
    assert any("promote sample/2" in line for line in ran) and any("sample:20" in line for line in ran)
