"""The serving image as an endpoint runs it: slim (only what serving needs, at most 1.2 GB), started
on a mounted model by its entry point, answering as ``tlp predict`` answers and watching drift.
How fast it becomes healthy is measured by the serving benchmark (``bench/serving.py --cold-start``),
not asserted here."""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.docker.conftest import SERVE_IMAGE, unavailable
from tests.support import free_port

pytestmark = pytest.mark.docker

MAX_BYTES = 1_200_000_000
LEFT_OUT = ("kfp", "mlflow", "apache_beam", "tf_keras", "sklearn", "google.cloud.aiplatform", "tensorflow_datasets",
            "aiohttp", "grpc_tools")


@pytest.fixture(scope="module")
def serve_image(docker_client):
    import docker

    try:
        return docker_client.images.get(SERVE_IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"image {SERVE_IMAGE} is not built (make images)")


def test_the_serving_image_is_slim_and_starts_tlp_serve_as_a_user(docker_client, serve_image):
    assert serve_image.attrs["Size"] <= MAX_BYTES, f"{serve_image.attrs['Size'] / 1e9:.3f} GB"
    config = serve_image.attrs["Config"]
    assert config["Entrypoint"] == ["tlp-serve"] and config["User"] == "1000:1000"
    probe = (f"import importlib.util as u; print([m for m in {LEFT_OUT!r} "
             "if u.find_spec(m.split('.')[0]) and u.find_spec(m)])")
    found = docker_client.containers.run(SERVE_IMAGE, ["-c", probe], entrypoint=["python"], network_mode="none",
                                         remove=True).decode().strip()
    assert found == "[]"


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def _sample_png(index: int) -> bytes:
    """A photo of the sample data's kind (noisy: no two alike, unlike flat colours, which a
    random-weight network can map to the same features)."""
    import io

    from PIL import Image

    from tlp.components.lib.dataprep.sources import sample_pixels

    buffer = io.BytesIO()
    Image.fromarray(sample_pixels(index % 2, (5, index), size=64)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_mounted_model_is_served_as_tlp_predict_answers(docker_client, serve_image, tuned_model, tmp_path):
    from tests.serve.conftest import photo_paths
    from tlp.pipelines.predict import predict_files

    model_dir = shutil.copytree(tuned_model[0], tmp_path / "model")
    for directory, _, names in os.walk(tmp_path):  # readable by the image's user 1000
        os.chmod(directory, 0o755)
        for name in names:
            os.chmod(os.path.join(directory, name), 0o644)
    photos = photo_paths(tmp_path / "photos")[:3]
    port = free_port()
    container = docker_client.containers.run(  # the drift watch recomputed after 10 images, in the image
        SERVE_IMAGE, ["/model", "--host", "0.0.0.0", "--name", "cats", "--drift-every", "10", "--drift-window", "10"],
        detach=True,
        volumes={str(model_dir): {"bind": "/model", "mode": "ro"}}, ports={"8080/tcp": ("127.0.0.1", port)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while _get(f"{url}/v2/health/ready")[0] != 200:
            container.reload()
            assert container.status == "running", container.logs().decode()[-3000:]
            assert time.monotonic() < deadline, container.logs().decode()[-3000:]
            time.sleep(0.2)
        instances = [{"image_bytes": {"b64": base64.b64encode(open(p, "rb").read()).decode()}} for p in photos]
        request = urllib.request.Request(f"{url}/v1/models/cats:predict", json.dumps({"instances": instances}).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        expected = predict_files(str(model_dir), photos, registry_uri="unused")
        for prediction, row in zip(answer["predictions"], expected, strict=True):
            assert prediction["label"] == row["label"]
            np.testing.assert_allclose(prediction["probabilities"], row["probabilities"], atol=1e-5)
        # 12 distinct images in all (a photo sent again counts once): the watch's worker runs its first test.
        for index in range(9):
            more = {"instances": [{"image_bytes": {"b64": base64.b64encode(_sample_png(index)).decode()}}]}
            with urllib.request.urlopen(urllib.request.Request(
                    f"{url}/v1/models/cats:predict", json.dumps(more).encode(), {"Content-Type": "application/json"}),
                    timeout=60) as response:
                assert response.status == 200
        while (state := json.loads(_get(f"{url}/drift")[1]))["computed"] < 1:
            assert not state["error"] and time.monotonic() < deadline + 120, state
            time.sleep(0.2)
        assert 0.0 <= state["auc"] <= 1.0 and state["recent"] == 10 and state["distinct"] == 10, state
        assert not state["error"] and not state["note"], state
        metrics = _get(f"{url}/metrics")[1].decode()
        assert f"tlp_image_drift_auc {state['auc']}" in metrics
    finally:
        container.remove(force=True)
