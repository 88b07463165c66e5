"""A real ``tlp serve`` process on the session's small servable model, and test photos."""

import base64
import json
import os
import sys
import urllib.error
import urllib.request

import pytest

from tests.conftest import write_image

MODEL_NAME = "sample"
MAX_BODY_MB = 1.0


def photo_paths(directory) -> list[str]:
    """Six small photos of different sizes, colours and formats (JPEG, PNG, GIF, BMP)."""
    specs = [((90, 60), (220, 120, 40), "a.jpg"), ((64, 64), (40, 90, 200), "b.png"),
             ((30, 50), (250, 250, 250), "c.gif"), ((120, 80), (20, 160, 60), "d.bmp"),
             ((200, 150), (180, 30, 160), "e.jpeg"), ((64, 48), (0, 0, 0), "f.png")]
    return [write_image(os.path.join(str(directory), name), size=size, color=color) for size, color, name in specs]


def instance(data: bytes) -> dict:
    return {"image_bytes": {"b64": base64.b64encode(data).decode()}}


def post(url: str, body, timeout: float = 60.0, content_type: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# Tests using these fixtures start processes of their own that load TensorFlow: slow by the marker's
# definition (pyproject.toml), so they run in make test and not in make test-fast's inner loop.
PROCESS_FIXTURES = {"served"}


def pytest_collection_modifyitems(items):
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> list[str]:
    return photo_paths(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def served(tuned_model, tmp_path_factory):
    """``tlp serve MODEL_DIR --name sample`` in its own process: (base URL, model dir, log path).
    Batches of up to 8 within 50 ms, so the concurrency test can see batching; bodies up to 1 MB."""
    from tlp.components.lib import serving

    port = serving.free_port()
    url = f"http://127.0.0.1:{port}"
    log = str(tmp_path_factory.mktemp("serve-log") / "serve.log")
    command = [sys.executable, "-m", "tlp.pipelines.cli", "serve", tuned_model[0], "--port", str(port),
               "--name", MODEL_NAME, "--max-batch", "8", "--max-latency-ms", "50", "--max-body-mb", str(MAX_BODY_MB)]
    with serving.server_process(command, url, MODEL_NAME, log, timeout=240):
        yield url, tuned_model[0], log
