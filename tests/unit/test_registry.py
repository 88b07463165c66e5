"""The local MLflow registry on SQLite: versions, lineage, idempotency, lookup."""

import pytest

from tlp.components.lib import registry, specs
from tlp.components.lib.specs import ConfigError


def _model_dir(tmp_path, name, content):
    directory = tmp_path / name
    (directory / "variables").mkdir(parents=True, exist_ok=True)
    (directory / "saved_model.pb").write_bytes(content)
    (directory / "variables" / "v.data").write_bytes(b"weights" + content)
    return str(directory)


def test_versions_lineage_idempotency_and_lookup(tmp_path):
    uri = f"sqlite:///{tmp_path}/reg/registry.db"
    reg = registry.open_registry(uri)
    tags = {"data_spec": "sample:40", "weights_spec": "none", "data_fingerprint": "abc"}
    first = reg.register(_model_dir(tmp_path, "m1", b"one"), "sample", metrics={"test_accuracy": 0.9},
                         params={"base": "MobileNetV2"}, tags=tags)
    assert (first.version, first.champion, first.existing) == ("1", False, False)
    assert reg.champion_version("sample") is None  # register() never moves the alias
    reg.set_champion("sample", "1")
    again = reg.register(_model_dir(tmp_path, "m1", b"one"), "sample", metrics={"test_accuracy": 0.9},
                         params={"base": "MobileNetV2"}, tags=tags)
    assert (again.version, again.existing, again.champion) == ("1", True, True)
    second = reg.register(_model_dir(tmp_path, "m2", b"two"), "sample", metrics={"test_accuracy": 0.95},
                          params={"base": "MobileNetV2"}, tags=tags)
    assert (second.version, second.champion) == ("2", False)

    version = reg.client.get_model_version("sample", "2")
    assert version.tags["data_spec"] == "sample:40" and version.tags["weights_spec"] == "none"
    assert version.tags["metric.test_accuracy"] == "0.950000"
    run = reg.client.get_run(version.run_id)
    assert run.data.params["base"] == "MobileNetV2" and run.data.metrics["test_accuracy"] == 0.95

    fetched = reg.model_dir("sample/2")
    with open(f"{fetched}/saved_model.pb", "rb") as handle:
        assert handle.read() == b"two"
    with open(f"{reg.model_dir('sample@champion')}/saved_model.pb", "rb") as handle:
        assert handle.read() == b"one"
    with pytest.raises(ConfigError, match="is not in the registry"):
        reg.model_dir("sample/9")


def test_registry_uris_are_checked():
    assert specs.check_registry_uri("sqlite:///rel/r.db").startswith("sqlite:////")
    with pytest.raises(ConfigError, match="not a registry URI"):
        specs.check_registry_uri("postgres://x")
    assert specs.check_registry_uri("vertex://my-project/us-central1/cats") == "vertex://my-project/us-central1/cats"
    for bad, why in (("vertex", "only a cloud run"), ("vertex://my-project", "not a Vertex AI registry URI"),
                     ("vertex://P/us-central1", "not a Google Cloud project ID"),
                     ("vertex://my-project/moon/m", "not a region"),
                     ("vertex://my-project/us-central1/m?colour=red", "unknown option"),
                     ("vertex://my-project/us-central1?staging_bucket=/tmp", "must be a gs:// URI")):
        with pytest.raises(ConfigError, match=why):
            specs.check_registry_uri(bad)
    with pytest.raises(ConfigError, match="holds credentials in its URI") as error:
        specs.check_registry_uri("https://alice:s3cret@mlflow.example.com")
    assert "s3cret" not in str(error.value)


@pytest.mark.slow  # its own processes load TensorFlow or Beam: make test runs it, make test-fast does not
def test_racing_registrations_from_two_processes_both_land(tmp_path):
    """Two processes register different models into one SQLite registry at the same moment."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/race/registry.db"
    code = (
        "import sys\n"
        "from tlp.components.lib.registry import open_registry\n"
        "r = open_registry(sys.argv[1]).register(sys.argv[2], 'raced', metrics={'test_accuracy': 0.9},\n"
        "    params={}, tags={})\n"
        "print('VERSION', r.version)\n"
    )
    dirs = [_model_dir(tmp_path, f"m{i}", f"model {i}".encode()) for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, d], stdout=subprocess.PIPE, text=True)
             for d in dirs]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    versions = sorted(line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("VERSION"))
    assert versions == ["1", "2"]
    reg = registry.open_registry(uri)
    assert len(reg.client.search_model_versions("name = 'raced'")) == 2  # still readable


def test_files_attached_again_show_the_latest_metrics_not_the_largest(tmp_path):
    """A version exported again (tlp export after a first --export-litert) must show the new
    measurements: MLflow reads a metric's latest value by step, then time, then size."""
    reg = registry.open_registry(f"sqlite:///{tmp_path}/reg/registry.db")
    reg.register(_model_dir(tmp_path, "m1", b"one"), "sample", metrics={"test_accuracy": 0.9}, params={}, tags={})
    files = tmp_path / "litert"
    files.mkdir()
    (files / "litert.json").write_text("{}")
    for accuracy in (0.95, 0.60):
        reg.attach_files("sample", "1", str(files), ["litert.json"], artifact_path="litert",
                         metrics={"litert.float16.accuracy": accuracy}, tags={})
    run = reg.client.get_run(reg.client.get_model_version("sample", "1").run_id)
    assert run.data.metrics["litert.float16.accuracy"] == 0.60
    assert reg.client.get_model_version("sample", "1").tags["metric.litert.float16.accuracy"] == "0.600000"
