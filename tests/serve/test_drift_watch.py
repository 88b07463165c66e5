"""The server watches the photos it is sent: a drift AUC of recent requests against the model's
training photos, recomputed off the request path, on ``/metrics`` (gauge ``tlp_image_drift_auc``),
``GET /drift`` and the page. Photos of the training photos' kind keep it low; the same photos
through a much worse camera raise it."""

import base64
import json
import math
import re
import shutil
import time

import numpy as np
import pytest

from tests.serve.browser import chromium, headless_page
from tests.serve.conftest import get, post
from tests.support import new_and_worse_photos
from tlp.components.lib import drift, serving
from tlp.components.lib.drift_monitor import GAUGE
from tlp.components.lib.settings import ServeOptions
from tlp.pipelines import serve

WINDOW = 40  # the drift is measured on the last 40 images, recomputed every 40


def _gauge(url: str) -> float:
    _, text = get(f"{url}/metrics")
    match = re.search(rf"^{GAUGE} (\S+)$", text.decode(), re.M)
    assert match, f"{GAUGE} is not on /metrics"
    return float(match.group(1))


def _drift(url: str) -> dict:
    status, body = get(f"{url}/drift")
    assert status == 200
    return json.loads(body)


def _send(url: str, name: str, paths: list[str], per_request: int = 8) -> None:
    for start in range(0, len(paths), per_request):
        instances = [{"image_bytes": {"b64": base64.b64encode(open(p, "rb").read()).decode()}}
                     for p in paths[start:start + per_request]]
        status, answer = post(f"{url}/v1/models/{name}:predict", {"instances": instances})
        assert status == 200, answer


def _wait_for_computation(url: str, count: int, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while (state := _drift(url))["computed"] < count:
        assert time.monotonic() < deadline, f"no drift recomputation #{count} within {timeout:.0f} s: {state}"
        time.sleep(0.1)
    return state


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return new_and_worse_photos(str(tmp_path_factory.mktemp("photos")), per_class=WINDOW // 2)


@pytest.fixture(scope="module")
def watching(tuned_model):
    """A server on the session's fine-tuned model (which carries its reference), in this process."""
    options = ServeOptions(route_name="cats", drift_every=WINDOW, drift_window=WINDOW)
    app, card, drift_not_watched = serve.prepare(tuned_model[0], "", options)
    assert drift_not_watched == ""
    with serving.running_in_thread(app) as url:
        yield url, card


def test_the_gauge_rises_when_the_camera_gets_much_worse(watching, photos, tmp_path):
    url, card = watching
    same, worse = photos
    assert math.isnan(_gauge(url))  # nothing measured yet: no number that could be mistaken for an AUC
    assert _drift(url) | {"auc": None} == _drift(url)

    _send(url, card.name, same)
    calm = _wait_for_computation(url, 1)
    assert calm["auc"] <= 0.65 and calm["verdict"] == "like the training photos", calm
    assert _gauge(url) == pytest.approx(calm["auc"])

    _send(url, card.name, worse)  # the window now holds only the worse camera's photos
    drifted = _wait_for_computation(url, 2)
    assert drifted["auc"] >= 0.8 and drifted["verdict"] == "drifted", drifted
    assert _gauge(url) == pytest.approx(drifted["auc"])
    assert drifted["recent"] == WINDOW and not drifted["error"]

    if chromium() is None:
        pytest.fail("the page check needs Debian's chromium (apt-get install chromium)")
    with headless_page(str(tmp_path / "profile")) as page:
        page.navigate(url + "/")
        assert page.wait_for("document.getElementById('drift').dataset.state", timeout=60) == "measured"
        line = page.evaluate("document.getElementById('drift').textContent")
        assert f"AUC {drifted['auc']:.3f}" in line and "drifted" in line, line
        assert page.evaluate("document.getElementById('drift').classList.contains('drifted')")


def test_a_model_without_a_reference_is_served_and_says_why_drift_is_not_watched(tuned_model, photos, tmp_path):
    model_dir = shutil.copytree(tuned_model[0], tmp_path / "model")
    (model_dir / "drift_reference.npz").unlink()  # as exported before tlp kept references
    app, card, drift_not_watched = serve.prepare(str(model_dir), "", ServeOptions(route_name="old"))
    with serving.running_in_thread(app) as url:
        state = _drift(url)
        assert state["watching"] is False and "carries no drift reference" in state["why"]
        assert "carries no drift reference" in serve.banner(ServeOptions(), card, drift_not_watched)
        status, answer = post(f"{url}/v1/models/old:predict", {"instances": [
            {"image_bytes": {"b64": base64.b64encode(open(path, "rb").read()).decode()}} for path in photos[0][:2]]})
        assert status == 200 and len(answer["predictions"]) == 2  # served as before


def test_drift_every_0_turns_the_watch_off(tuned_model):
    app, _, drift_not_watched = serve.prepare(tuned_model[0], "", ServeOptions(drift_every=0))
    assert drift_not_watched == "turned off (--drift-every 0)"
    with serving.running_in_thread(app) as url:
        assert _drift(url) == {"watching": False, "auc": None, "why": "turned off (--drift-every 0)"}


@pytest.mark.parametrize("damage, words", [
    (lambda path: path.write_bytes(b"not a zip file"), "cannot be read"),
    (lambda path: drift.save_reference(str(path.parent), np.ones((5, 1280)), [f"p{i}" for i in range(5)]),
     "5 photos x 1280 features) does not fit it"),
    (lambda path: drift.save_reference(str(path.parent), np.ones((20, 64)), [f"p{i}" for i in range(20)]),
     "20 photos x 64 features) does not fit it"),
])
def test_a_reference_that_does_not_fit_the_model_is_served_without_the_watch(tuned_model, tmp_path, damage, words):
    model_dir = shutil.copytree(tuned_model[0], tmp_path / "model")
    damage(model_dir / drift.REFERENCE_FILE)
    predictor = serving.Predictor(str(model_dir), features=True)
    monitor, why_not = serving.watch_drift(predictor, ServeOptions())
    assert monitor is None and words in why_not and predictor.on_images is None


def _send_mixed(url: str, name: str, paths: list[str], copies: int) -> None:
    """Each photo ``copies`` times, in requests of 1 and of 8 images sent 4 at a time, so the
    micro-batcher runs a photo alone at one time and among others at another."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    requests = []
    for _ in range(copies):
        order = [paths[i] for i in rng.permutation(len(paths))]
        requests += [[p] for p in order[:16]] + [order[i:i + 8] for i in range(16, len(order), 8)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda chunk: _send(url, name, chunk, per_request=8), requests))


@pytest.mark.slow
def test_photos_sent_again_in_batches_of_1_and_8_read_as_the_training_kind(tuned_model, photos, monkeypatch):
    """Through the server with micro-batching: 40 photos of the training kind, each sent 12 times
    in batches of 1 and 8 mixed, read as 40 photos of the training kind, however their features
    differ from batch to batch; the worse camera's photos, sent so too, still read drifted."""
    from tests.serve.batch_sensitive_worker import batch_sensitive
    from tlp.components.lib import drift_monitor
    from tlp.components.lib import model as model_lib

    # The worker process computes the watched features: it runs with the batch-sensitive signature.
    monkeypatch.setattr(drift_monitor, "WORKER_MODULE", "tests.serve.batch_sensitive_worker")
    monkeypatch.setattr(model_lib, "load_servable", batch_sensitive(model_lib.load_servable))
    same, worse = photos
    window = len(same) * 12
    options = ServeOptions(route_name="mixed", drift_every=window, drift_window=window, max_batch=32,
                           max_latency_ms=20.0)
    app, card, drift_not_watched = serve.prepare(tuned_model[0], "", options)
    assert drift_not_watched == ""
    with serving.running_in_thread(app) as url:
        _send_mixed(url, card.name, same, copies=12)
        calm = _wait_for_computation(url, 1)
        assert calm["distinct"] == len(same) and calm["auc"] <= 0.65, calm
        _send_mixed(url, card.name, worse, copies=12)
        drifted = _wait_for_computation(url, 2)
        assert drifted["distinct"] == len(worse) and drifted["verdict"] == "drifted", drifted
        print(f"served drift AUC: training kind {calm['auc']:.3f}, worse camera {drifted['auc']:.3f}")


def test_the_watch_sees_a_request_as_data_prep_stores_the_photo(tuned_model, photos):
    """The reference holds features of training photos as data prep stored them (decoded, resized,
    JPEG): the served watch must see a request so too, with the prepared photo's content id, or the
    re-encoding itself reads as drift. The answer still comes from the image as sent; the request
    path hands the images as sent to the watch, whose worker process prepares them."""
    import tensorflow as tf

    from tlp.components.lib import model as model_lib
    from tlp.components.lib.dataprep.encode import prepare_bytes
    from tlp.components.lib.drift_monitor import DriftMonitor

    predictor = serving.Predictor(tuned_model[0], features=True)
    handed = []
    predictor.on_images = lambda images, skipped: handed.append((images, skipped))
    sent = [open(path, "rb").read() for path in photos[0][:4]]
    answers = predictor(sent)
    assert handed == [(sent, 0)]  # the images as sent, none skipped
    reference = drift.load_reference(tuned_model[0])
    monitor = DriftMonitor(reference.features, capacity=8, every=1000, gauge=False, model_dir=tuned_model[0],
                           image_size=predictor.image_size)
    try:
        monitor.watch(*handed[0])
        deadline = time.monotonic() + 120
        while monitor.snapshot()["recent"] < 4:
            assert time.monotonic() < deadline and not monitor.error, monitor.snapshot()
            time.sleep(0.1)
        observed, observed_photos = monitor._buffer[:4].copy(), monitor._photos[:4]
    finally:
        monitor.close()
    prepared = [prepare_bytes(data, predictor.image_size) for data in sent]
    signature = model_lib.load_servable(tuned_model[0], model_lib.FEATURES_SIGNATURE)
    expected = signature(image_bytes=tf.constant(prepared))["pooled_features"].numpy()
    assert np.abs(observed - expected).max() <= 1e-4 * np.abs(expected).max()
    assert observed_photos == [drift.content_id(data) for data in prepared]  # content ids
    assert monitor.left_out == 0 and monitor.dropped == 0
    as_sent = model_lib.load_servable(tuned_model[0])(image_bytes=tf.constant(sent))["probabilities"].numpy()
    np.testing.assert_allclose([answer.probabilities for answer in answers], as_sent, atol=1e-5)


def test_the_request_path_runs_the_model_once_on_the_images_as_sent(tuned_model, photos, monkeypatch):
    """The watch's second model pass (the prepared images) runs in its worker process, not on the
    request path: the server's model sees each request's images once, and the watch still gets them."""
    from tlp.components.lib import model as model_lib

    seen = []
    load_servable = model_lib.load_servable

    def counting(directory, signature="serving_default"):
        served = load_servable(directory, signature)

        class Counting:
            structured_outputs = served.structured_outputs

            def __call__(self, **inputs):
                seen.append(int(inputs["image_bytes"].shape[0]))
                return served(**inputs)

        return Counting()

    monkeypatch.setattr(model_lib, "load_servable", counting)
    app, card, drift_not_watched = serve.prepare(tuned_model[0], "", ServeOptions(
        route_name="once", drift_every=40, drift_window=40))
    assert drift_not_watched == ""
    with serving.running_in_thread(app) as url:
        seen.clear()  # the warm-up's blank image
        _send(url, card.name, photos[0][:8], per_request=8)
        deadline = time.monotonic() + 300  # the worker runs at SCHED_IDLE: slow to start on a loaded machine
        while (state := _drift(url))["recent"] < 8:
            assert time.monotonic() < deadline and not state["error"], state
            time.sleep(0.1)
    assert seen == [8], seen  # one model call, on the 8 images as sent: nothing more on the request path
