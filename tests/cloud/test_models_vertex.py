"""`tlp models` and the champion decisions against the Vertex AI Model Registry (the stand-in):
each version's record lives in its version description, promotions and rollbacks move the
champion (and default) alias and record who, why and when on the version."""

import json

import pytest

from tests.unit.test_models import METRICS, _dataset, _model, fabricated_models_serve  # noqa: F401 (autouse)
from tlp.components.lib.registration import register_model
from tlp.components.lib.registry import open_registry
from tlp.pipelines import cli


@pytest.fixture
def uri(standin):
    standin.add_bucket("tlp-staging")
    return f"vertex://tlp-test/us-central1?api_endpoint={standin.url}&staging_bucket=gs://tlp-staging"


def _tlp(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_register_list_show_promote_rollback(standin, uri, tmp_path, capsys):
    for i in (1, 2, 3):  # 2: another --seed, 3: a class more; neither is promoted automatically
        classes = ["cat", "dog"] if i < 3 else ["bird", "cat", "dog"]
        registered = register_model(_model(tmp_path, f"m{i}", classes, str(i)),
                                    _dataset(tmp_path, f"d{i}", classes, seed=7 if i == 2 else 42),
                                    {**METRICS, "test_accuracy": 0.9 + i / 100}, uri, "pets")
        assert registered.champion == (i == 1), registered.reason
    assert "the classes changed since champion version 1 (added 'bird')" in registered.reason
    assert registered.promote_command.startswith("tlp models promote pets/3 --reason 'WHY' --registry 'vertex://")

    registry = open_registry(uri)
    record = registry.version("pets", "3")
    assert record.tags["split_method"] == "content-sha256" and json.loads(record.tags["class_names"]) == [
        "bird", "cat", "dog"]
    assert record.tags["champion_decision"] == registered.reason  # recorded in the version's description
    patches = standin.find("PATCH", r"/models/[^/]+@3$")
    assert patches and "versionDescription" in patches[-1].body

    capsys.readouterr()
    code, out, _ = _tlp(capsys, "models", "list", "pets", "--registry", uri, "--json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["version"], r["champion"]) for r in rows] == [("1", True), ("2", False), ("3", False)]
    assert rows[1]["split"] == "content-sha256/seed=7" and rows[2]["images"] == 150
    assert rows[0]["test_accuracy"] == pytest.approx(0.91)

    code, out, _ = _tlp(capsys, "models", "promote", "pets/3", "--reason", "birds are in scope", "--by", "bob",
                        "--registry", uri)
    assert code == 0 and "pets version 3 is now the champion (was version 1)" in out
    aliases = standin.find("POST", r":mergeVersionAliases$")[-1].body["versionAliases"]
    assert set(aliases) >= {"champion", "default"}
    [model] = standin.models.values()
    assert "champion" in model["versions"]["3"]["versionAliases"]
    shown = json.loads(_tlp(capsys, "models", "show", "pets/3", "--registry", uri, "--json")[1])
    assert shown["champion"] and shown["tags"]["promoted_by"] == "bob"
    assert shown["tags"]["promoted_reason"] == "birds are in scope" and shown["tags"]["previous_champion"] == "1"

    code, out, _ = _tlp(capsys, "models", "rollback", "pets", "--registry", uri)
    assert code == 0 and "pets version 1 is the champion again (was version 3)" in out
    assert "champion" in model["versions"]["1"]["versionAliases"]
    assert registry.champion_version("pets") == "1"

    code, _, err = _tlp(capsys, "models", "list", "cats", "--registry", uri)
    assert code == 3 and "no model 'cats' in the registry" in err and "models there: pets" in err
    code, _, err = _tlp(capsys, "models", "promote", "pets/7", "--reason", "x", "--registry", uri)
    assert code == 3 and "has no version '7'" in err and "its versions: 1, 2, 3" in err


def test_a_long_record_still_parses():
    from tlp.components.lib.registry.vertex_backend import DESCRIPTION_LIMIT, _read_description, describe

    classes = {f"class_{i:03d}": i for i in range(300)}
    record = {"metrics": {"test_accuracy": 0.9}, "params": {f"p{i}": "x" * 20 for i in range(50)},
              "tags": {"class_counts": json.dumps(classes), "class_names": json.dumps(sorted(classes)),
                       "champion_decision": "why " * 300, "split_method": "content-sha256"}}
    text = describe(record)
    assert len(text) <= DESCRIPTION_LIMIT
    read = _read_description(text)
    assert read["metrics"] == {"test_accuracy": 0.9} and read["tags"]["split_method"] == "content-sha256"
    assert "class_counts" not in read["tags"]  # dropped first: the data checks then compare totals and say so
