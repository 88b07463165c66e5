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
    assert monitor is None and words in why_not and predictor.on_features is None


class BatchSensitive:
    """The features signature, its pooled features scaled by 1 + 1e-6 x the call's number: as
    MobileNetV2 on CPU gives one image slightly different features alone than inside a batch
    (measured at alpha 1.0: about 1e-6 of their scale). The session's model (alpha 0.35, 64 px) gives
    nearly every image equal ones, which would hide the defect."""

    def __init__(self, signature):
        self.signature, self.structured_outputs, self.calls = signature, signature.structured_outputs, 0

    def __call__(self, **inputs):
        self.calls += 1
        outputs = dict(self.signature(**inputs))
        outputs["pooled_features"] = outputs["pooled_features"] * (1.0 + 1e-6 * self.calls)
        return outputs


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
    from tlp.components.lib import model as model_lib

    load_servable = model_lib.load_servable
    monkeypatch.setattr(model_lib, "load_servable", lambda directory, signature="serving_default": (
        BatchSensitive(load_servable(directory, signature)) if signature == model_lib.FEATURES_SIGNATURE
        else load_servable(directory, signature)))
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
    re-encoding itself reads as drift. The answer still comes from the image as sent."""
    import tensorflow as tf

    from tlp.components.lib import model as model_lib
    from tlp.components.lib.dataprep.encode import prepare_bytes

    predictor = serving.Predictor(tuned_model[0], features=True)
    seen = []
    predictor.on_features = lambda *arguments: seen.append(arguments)
    sent = [open(path, "rb").read() for path in photos[0][:4]]
    answers = predictor(sent)
    prepared = [prepare_bytes(data, predictor.image_size) for data in sent]
    signature = model_lib.load_servable(tuned_model[0], model_lib.FEATURES_SIGNATURE)
    expected = signature(image_bytes=tf.constant(prepared))["pooled_features"].numpy()
    [observed] = seen
    assert np.abs(observed[0] - expected).max() <= 1e-4 * np.abs(expected).max()
    assert observed[1:] == ([drift.content_id(data) for data in prepared], 0, 0)  # content ids, none left out
    as_sent = model_lib.load_servable(tuned_model[0])(image_bytes=tf.constant(sent))["probabilities"].numpy()
    np.testing.assert_allclose([answer.probabilities for answer in answers], as_sent, atol=1e-5)
