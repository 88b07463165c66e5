"""The local MLflow registry on SQLite: versions, lineage, idempotency, lookup."""

import pytest

from components.lib import registry
from components.lib.specs import ConfigError


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
    assert (first.version, first.champion, first.existing) == ("1", True, False)
    again = reg.register(_model_dir(tmp_path, "m1", b"one"), "sample", metrics={"test_accuracy": 0.9},
                         params={"base": "MobileNetV2"}, tags=tags)
    assert (again.version, again.existing) == ("1", True)
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
    assert registry.check_registry_uri("sqlite:///rel/r.db").startswith("sqlite:////")
    with pytest.raises(ConfigError, match="not a registry URI"):
        registry.check_registry_uri("postgres://x")
    with pytest.raises(ConfigError, match="not available yet"):
        registry.check_registry_uri("vertex://p/r/m")
