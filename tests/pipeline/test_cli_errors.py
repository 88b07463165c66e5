"""Bad settings end with one clear sentence naming the value and the fix, before any training."""

import os

import pytest

from tests.conftest import settings, write_image
from tlp.pipelines import docker_runner
from tlp.pipelines.cli import main

SMALL = ["--weights", "none", "--data", "sample:10", "--image-size", "32", "--alpha", "0.35"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--base", "VGG99"], "--base 'VGG99' is not supported"),
        (["--fine-tune-at", "500"], "--fine-tune-at 500 is beyond the 154 layers of MobileNetV2"),
        (["--epochs", "0"], "--epochs 0 must be a whole number of at least 1"),
        (["--epochs", "-2"], "--epochs -2 must be a whole number of at least 1"),
        (["--fine-tune-epochs", "-1"], "--fine-tune-epochs -1 must be a whole number of at least 0"),
        (["--data", "imagenet:cats"], "--data 'imagenet:cats' is not a data spec I know"),
        (["--devices", "tpu:8"], "--devices 'tpu:8' is not understood"),
        (["--registry", "postgres://db"], "--registry 'postgres://db' is not a registry URI"),
        (["--registry", "vertex"], "only a cloud run (tlp submit) knows"),
        (["--registry", "vertex://my-project/us-central1/cats"], "add ?staging_bucket=gs://BUCKET"),
    ],
)
def test_bad_parameters_fail_before_running(tmp_path, capsys, args, expected):
    code = main(["run", *SMALL, *args, "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("tlp: error: ") and expected in err
    assert len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "out" / "pipeline-root")  # nothing started


def test_local_run_into_vertex_needs_credentials_before_training(tmp_path, capsys, standin, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    registry = f"vertex://tlp-test/us-central1/cats?api_endpoint={standin.url}&staging_bucket=gs://b-tlp"
    code = main(["run", *SMALL, "--registry", registry, "--output-dir", str(tmp_path / "out")])
    assert code == 2 and "no Google Cloud credentials found" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / "pipeline-root") and standin.requests == []


def test_folder_with_one_class(tmp_path, capsys):
    write_image(str(tmp_path / "photos" / "cat" / "a.jpg"))
    code = main(["run", "--data", f"folder:{tmp_path / 'photos'}", "--weights", "none",
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "has 1 class folder(s) with images ('cat' (1 images))" in err


def test_folder_with_no_images(tmp_path, capsys):
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    (tmp_path / "photos" / "dog").mkdir(parents=True)
    (tmp_path / "photos" / "dog" / "readme.txt").write_text("x")
    code = main(["run", "--data", f"folder:{tmp_path / 'photos'}", "--weights", "none",
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2 and "has 0 class folder(s) with images" in capsys.readouterr().err


def test_auto_is_decided_before_the_run_and_announced(monkeypatch):
    from tlp.components.lib.settings import Settings
    from tlp.pipelines import environment
    from tlp.pipelines.resolve import resolve_local

    monkeypatch.setattr(environment, "tfds_cached", lambda name: False)
    monkeypatch.setattr(environment, "imagenet_weights_cached", lambda *a: False)
    offline, notes = resolve_local(Settings(), "out", probe=lambda host, port: False)
    assert (offline.data.data, offline.model.weights) == ("sample", "none")
    assert any("offline" in note for note in notes)
    assert offline.registry.registry == "sqlite:///" + os.path.abspath("out/registry.db")
    online, _ = resolve_local(Settings(), "out", probe=lambda host, port: True)
    assert (online.data.data, online.model.weights) == ("tfds:cats_vs_dogs", "imagenet")
    explicit, notes = resolve_local(settings(data="sample:20", weights="imagenet"), "out",
                                    probe=lambda host, port: False)
    assert (explicit.data.data, explicit.model.weights, notes) == ("sample:20", "imagenet", [])


def test_docker_runner_without_an_engine_says_so(tmp_path, capsys, monkeypatch):
    import docker

    def no_engine(*args, **kwargs):
        raise docker.errors.DockerException("Error while fetching server API version: no socket")

    monkeypatch.setattr(docker, "from_env", no_engine)
    code = main(["run", *SMALL, "--runner", "docker", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "--runner docker needs a running Docker engine" in err


def test_docker_runner_cannot_see_folders_outside_the_pipeline_root(tmp_path):
    from tlp.components.lib.settings import LocalRunOptions
    from tlp.components.lib.specs import ConfigError

    local = LocalRunOptions(output_dir=str(tmp_path / "out"))
    chosen = settings(check=False, data=f"folder:{tmp_path}/photos", weights="none", registry="sqlite:///x.db")
    with pytest.raises(ConfigError, match="cannot see --data folder"):
        docker_runner.check_docker_config(chosen, local)
    chosen = settings(check=False, data="sample", weights=str(tmp_path / "w.h5"))
    with pytest.raises(ConfigError, match="cannot see the weights file"):
        docker_runner.check_docker_config(chosen, LocalRunOptions(output_dir=str(tmp_path)))
