"""``tlp serve`` as a client sees it: a real server process on the session's servable model.

Round trip equals ``tlp predict``; 64 concurrent requests are all answered (and batched); every
kind of bad input gets its 4xx naming the instance and the problem, and the server keeps serving;
the v2 protocol, health routes and metrics answer."""

import concurrent.futures
import json
import re

import numpy as np
import pytest

from tests.serve.conftest import MAX_BODY_MB, MODEL_NAME, get, instance, post

PREDICT = f"/v1/models/{MODEL_NAME}:predict"


def _read(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _metric(url: str, name: str) -> float:
    _, text = get(f"{url}/metrics")
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text.decode(), re.M)
    return float(match.group(1)) if match else 0.0


def test_round_trip_equals_tlp_predict(served, photos):
    from tlp.pipelines.predict import predict_files

    url, model_dir, _ = served
    expected = predict_files(model_dir, photos, registry_uri="unused")
    status, answer = post(url + PREDICT, {"instances": [instance(_read(p)) for p in photos]})
    assert status == 200, answer
    assert len(answer["predictions"]) == len(photos)
    for row, prediction in zip(expected, answer["predictions"], strict=True):
        assert set(prediction) == {"label", "score", "probabilities", "class_names"}
        assert prediction["label"] == row["label"]
        assert prediction["class_names"] == ["circles", "squares"]
        np.testing.assert_allclose(prediction["probabilities"], row["probabilities"], atol=1e-5, rtol=0)
        assert prediction["score"] == pytest.approx(max(prediction["probabilities"]))
    # One image per request gives the same answers as the batch.
    status, single = post(url + PREDICT, {"instances": [instance(_read(photos[3]))]})
    assert status == 200
    np.testing.assert_allclose(single["predictions"][0]["probabilities"], expected[3]["probabilities"], atol=1e-5)


def test_64_concurrent_requests_are_all_answered_and_batched(served, photos):
    from tlp.pipelines.predict import predict_files

    url, model_dir, _ = served
    expected = {row["image"]: row for row in predict_files(model_dir, photos, registry_uri="unused")}
    batches_before = _metric(url, "tlp_batch_size_count")
    images_before = _metric(url, "tlp_batch_size_sum")
    paths = [photos[i % len(photos)] for i in range(64)]

    def one(path):
        return path, post(url + PREDICT, {"instances": [instance(_read(path))]}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        answers = list(pool.map(one, paths))
    assert len(answers) == 64
    for path, (status, answer) in answers:
        assert status == 200, answer
        np.testing.assert_allclose(answer["predictions"][0]["probabilities"], expected[path]["probabilities"],
                                   atol=1e-5)
    batches = _metric(url, "tlp_batch_size_count") - batches_before
    assert _metric(url, "tlp_batch_size_sum") - images_before == 64
    assert batches < 64, "concurrent requests were not batched"
    assert batches >= 64 / 8  # --max-batch 8


def _truncated(path) -> bytes:
    data = _read(path)
    return data[: len(data) // 2]


BAD_INPUTS = {
    # case: (body builder, status, instance index or None, problem)
    "non-image bytes": (lambda p: {"instances": [instance(_read(p[0])), instance(b"this is not an image")]},
                        400, 1, "not_an_image"),
    "truncated JPEG": (lambda p: {"instances": [instance(_truncated(p[0]))]}, 400, 0, "not_an_image"),
    "truncated PNG": (lambda p: {"instances": [instance(_read(p[1])), instance(_read(p[2])),
                                               instance(_truncated(p[1]))]}, 400, 2, "not_an_image"),
    "empty instances": (lambda p: {"instances": []}, 400, None, "empty_instances"),
    "no instances": (lambda p: {"images": []}, 400, None, "missing_instances"),
    "wrong key": (lambda p: {"instances": [instance(_read(p[0])), {"image": {"b64": "AAAA"}}]}, 400, 1, "wrong_key"),
    "b64 not a string": (lambda p: {"instances": [{"image_bytes": "AAAA"}]}, 400, 0, "wrong_key"),
    "not base64": (lambda p: {"instances": [{"image_bytes": {"b64": "%%%not base64%%%"}}]}, 400, 0, "not_base64"),
    "empty image": (lambda p: {"instances": [{"image_bytes": {"b64": ""}}]}, 400, 0, "empty_image"),
    "not JSON": (lambda p: b"{this is not json", 400, None, "not_json"),
    "oversized body": (lambda p: {"instances": [instance(b"\xff" * int(MAX_BODY_MB * 1e6))]}, 413, None,
                       "body_too_large"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_4xx_naming_the_instance_and_the_server_keeps_serving(served, photos, case):
    url, _, _ = served
    build, status, index, problem = BAD_INPUTS[case]
    got, answer = post(url + PREDICT, build(photos))
    assert got == status, answer
    assert answer["problem"] == problem
    assert answer["error"]
    if index is None:
        assert "instance" not in answer
    else:
        assert answer["instance"] == index
        assert answer["error"].startswith(f"instances[{index}]: ")
    # The server still answers a good request.
    good, result = post(url + PREDICT, {"instances": [instance(_read(photos[0]))]})
    assert good == 200 and result["predictions"][0]["label"] in ("circles", "squares")


def test_bad_image_does_not_fail_the_requests_it_was_batched_with(served, photos):
    url, _, _ = served
    bodies = [{"instances": [instance(_read(photos[i % 3]))]} for i in range(6)]
    bodies[2] = {"instances": [instance(_truncated(photos[0]))]}
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda body: post(url + PREDICT, body), bodies))
    assert [status for status, _ in answers] == [200, 200, 400, 200, 200, 200]


def test_unknown_model_is_404(served, photos):
    url, _, _ = served
    status, answer = post(f"{url}/v1/models/other:predict", {"instances": [instance(_read(photos[0]))]})
    assert status == 404 and "other" in answer["error"]


def test_v2_protocol_health_and_metrics(served, photos):
    from tlp.pipelines.predict import predict_files

    url, model_dir, _ = served
    import base64

    expected = predict_files(model_dir, photos[:2], registry_uri="unused")
    body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [2],
                        "data": [base64.b64encode(_read(p)).decode() for p in photos[:2]]}]}
    status, answer = post(f"{url}/v2/models/{MODEL_NAME}/infer", body)
    assert status == 200, answer
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 2]
    np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (2, 2)),
                               [row["probabilities"] for row in expected], atol=1e-5)
    assert outputs["label"]["data"] == [row["label"] for row in expected]
    status, answer = post(f"{url}/v2/models/{MODEL_NAME}/infer",
                          {"inputs": [{"name": "image_bytes", "datatype": "FP32", "shape": [1], "data": [1.0]}]})
    assert status == 400 and answer["problem"] == "wrong_datatype"

    assert json.loads(get(f"{url}/v2/health/live")[1]) == {"live": True}
    assert json.loads(get(f"{url}/v2/health/ready")[1]) == {"ready": True}
    assert json.loads(get(f"{url}/v1/models/{MODEL_NAME}")[1]) == {"name": MODEL_NAME, "ready": True}
    metadata = json.loads(get(f"{url}/v2/models/{MODEL_NAME}")[1])
    assert metadata["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
    _, metrics = get(f"{url}/metrics")
    text = metrics.decode()
    assert "request_predict_seconds" in text  # KServe's own latency histograms
    assert 'tlp_refused_requests_total{problem=' in text or "tlp_batch_size_count" in text
