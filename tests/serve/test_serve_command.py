"""``tlp serve`` as a command: registry references, Vertex AI's custom-container contract (the
model fetched from AIP_STORAGE_URI through the stand-in, by ``tlp-serve``: the serving image's
entry point), and one-sentence errors from both entry points."""

import os
import sys

import pytest

from tests.serve.conftest import get, instance, post
from tlp.components.lib.settings import ServeOptions
from tlp.components.lib.specs import ConfigError
from tlp.pipelines import serve


def test_vertex_environment_sets_port_host_routes_and_model():
    options, model = serve.apply_vertex_environment(ServeOptions(), "", {
        "AIP_HTTP_PORT": "8081", "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict",
        "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2", "AIP_STORAGE_URI": "gs://bucket/model"})
    assert (options.port, options.host, model) == (8081, "0.0.0.0", "gs://bucket/model")
    assert options.predict_route.endswith(":predict") and options.health_route.endswith("/2")
    # An explicit model wins over AIP_STORAGE_URI; no AIP_* changes nothing.
    assert serve.apply_vertex_environment(ServeOptions(), "m", {"AIP_STORAGE_URI": "gs://x"})[1] == "m"
    assert serve.apply_vertex_environment(ServeOptions(), "", {}) == (ServeOptions(), "")


def test_a_vertex_route_that_is_not_a_path_fails_in_one_sentence():
    with pytest.raises(ConfigError, match="AIP_HEALTH_ROUTE='health' is not a path"):
        serve.apply_vertex_environment(ServeOptions(), "m", {"AIP_HEALTH_ROUTE": "health"})


@pytest.mark.slow  # its own processes load TensorFlow or Beam: make test runs it, make test-fast does not
def test_vertex_custom_container_contract(standin, tuned_model, photos, tmp_path):
    """No model argument: the model comes from AIP_STORAGE_URI (gs://, through the stand-in) and
    is served on AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE at AIP_HTTP_PORT."""
    from tlp.components.lib import serving

    model_dir = tuned_model[0]
    for directory, _, names in os.walk(model_dir):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                standin.put_object(f"gs://models/cats/1/{os.path.relpath(path, model_dir)}", handle.read())
    port = serving.free_port()
    predict_route, health_route = "/v1/endpoints/123/deployedModels/456:predict", "/v1/endpoints/123/deployedModels/456"
    env = dict(os.environ, AIP_HTTP_PORT=str(port), AIP_PREDICT_ROUTE=predict_route, AIP_HEALTH_ROUTE=health_route,
               AIP_STORAGE_URI="gs://models/cats/1")
    url = f"http://127.0.0.1:{port}"
    tlp_serve = os.path.join(os.path.dirname(sys.executable), "tlp-serve")  # the console script
    with serving.server_process([tlp_serve], url, "model",
                                str(tmp_path / "serve.log"), timeout=240, env=env):
        status, body = get(url + health_route)
        assert status == 200 and b'"ready":true' in body
        with open(photos[0], "rb") as handle:
            status, answer = post(url + predict_route, {"instances": [instance(handle.read())]})
        assert status == 200, answer
        assert answer["predictions"][0]["class_names"] == ["circles", "squares"]
    assert standin.find("GET", r"/storage/v1/b/models/o$")  # listed the prefix, then downloaded it


def test_a_registered_champion_resolves_to_its_version(tuned_model, sample_dataset, tmp_path):
    from tlp.components.lib.registration import register_model

    registry = f"sqlite:///{tmp_path}/registry.db"
    register_model(tuned_model[0], sample_dataset, {"test_accuracy": 1.0}, registry, "sample")
    resolved = serve.resolve("sample@champion", registry)
    assert (resolved.name, resolved.version) == ("sample", "1")
    assert os.path.exists(os.path.join(resolved.model_dir, "saved_model.pb"))
    assert serve.resolve("sample/1", registry).version == "1"


@pytest.mark.parametrize("argv, message", [
    (["serve"], "tlp serve needs a model"),
    (["serve", "nothing-here"], "is neither a directory nor NAME@champion"),
    (["serve", "{tmp}"], "is not a model tlp can serve"),
    (["serve", "{tmp}", "--max-batch", "0"], "--max-batch 0 must be a whole number of at least 1"),
    (["serve", "{tmp}", "--name", "a/b"], "cannot be part of a URL path"),
])
@pytest.mark.parametrize("entry_point", ["tlp serve", "tlp-serve"])
def test_bad_settings_fail_in_one_sentence(argv, message, entry_point, tmp_path, capsys, monkeypatch):
    from tlp.pipelines.cli import main

    monkeypatch.delenv("AIP_STORAGE_URI", raising=False)
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    code = main(argv) if entry_point == "tlp serve" else serve.main(argv[1:])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith(f"{entry_point.split()[0]}: error: ")


def test_a_registered_version_without_a_registry_client_says_what_the_serving_image_serves(monkeypatch, tmp_path):
    """The slim serving image has no MLflow: NAME@champion gets one sentence, not an ImportError."""
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(ConfigError, match="serving image serves a model directory or gs:// prefix"):
        serve.resolve("cats@champion", f"sqlite:///{tmp_path}/registry.db")
