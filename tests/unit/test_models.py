"""`tlp models` against the local MLflow registry, and the champion decisions a person has to
take: a class-set change or another split is registered but not promoted automatically."""

import json

import pytest

from tlp.components.lib import registration
from tlp.components.lib.infra_validation import InfraResult
from tlp.components.lib.registration import register_model
from tlp.components.lib.registry import open_registry
from tlp.pipelines import cli

METRICS = {"test_accuracy": 0.9, "val_accuracy": 0.88, "train_accuracy": 0.91, "gap": 0.03}


@pytest.fixture(autouse=True)
def fabricated_models_serve(monkeypatch):
    """The models here are a few bytes, not SavedModels: infra validation (tested on its own) is stubbed."""
    stub = lambda *args, **kwargs: InfraResult(True, "stubbed", mode="stub")  # noqa: E731
    monkeypatch.setattr(registration, "infra_validate", stub)


def _model(tmp_path, name, classes, marker):
    directory = tmp_path / name
    directory.mkdir()
    (directory / "saved_model.pb").write_bytes(marker.encode())
    (directory / "model_info.json").write_text(json.dumps({"class_names": classes, "options": {"weights": "none"}}))
    return str(directory)


def _dataset(tmp_path, name, classes, seed=42, per_class=50):
    directory = tmp_path / name
    directory.mkdir()
    counts = {"train": {c: per_class - 10 for c in classes}, "val": {c: 5 for c in classes},
              "test": {c: 5 for c in classes}}
    (directory / "metadata.json").write_text(json.dumps({
        "source": "folder:/photos/pets", "class_names": classes, "image_size": 32, "counts": counts,
        "num_examples": {s: sum(c.values()) for s, c in counts.items()}, "fingerprint": name,
        "source_fingerprint": name, "split": {"method": "content-sha256", "seed": seed, "moved": []},
    }))
    return str(directory)


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path}/reg/registry.db"


def test_a_class_set_change_is_registered_but_not_promoted(tmp_path, uri):
    first = register_model(_model(tmp_path, "m1", ["cat", "dog"], "1"), _dataset(tmp_path, "d1", ["cat", "dog"]),
                           METRICS, uri)
    assert first.champion
    second = register_model(_model(tmp_path, "m2", ["bird", "cat", "dog"], "2"),
                            _dataset(tmp_path, "d2", ["bird", "cat", "dog"]), {**METRICS, "test_accuracy": 1.0}, uri)
    assert (second.version, second.champion) == ("2", False)
    assert "the classes changed since champion version 1 (added 'bird')" in second.reason
    assert "not promoted automatically" in second.reason
    assert second.promote_command == f"tlp models promote pets/2 --reason 'WHY' --registry {uri}"
    assert second.reason.endswith(second.promote_command)
    registry = open_registry(uri)
    assert registry.champion_version("pets") == "1"
    recorded = registry.version("pets", "2").tags
    assert recorded["champion_decision"] == second.reason
    assert recorded["split_method"] == "content-sha256" and recorded["split_seed"] == "42"
    assert json.loads(recorded["class_counts"]) == {"bird": 50, "cat": 50, "dog": 50}


def test_a_champion_split_another_way_is_not_compared(tmp_path, uri):
    register_model(_model(tmp_path, "m1", ["cat", "dog"], "1"), _dataset(tmp_path, "d1", ["cat", "dog"]), METRICS, uri)
    registry = open_registry(uri)
    registry.set_tags("pets", "1", {"split_method": ""})  # as registered before content splits
    second = register_model(_model(tmp_path, "m2", ["cat", "dog"], "2"), _dataset(tmp_path, "d2", ["cat", "dog"]),
                            METRICS, uri)
    assert not second.champion and "seeded shuffle (before content splits)" in second.reason
    third = register_model(_model(tmp_path, "m3", ["cat", "dog"], "3"),
                           _dataset(tmp_path, "d3", ["cat", "dog"], seed=7), METRICS, uri)
    assert "content-sha256/seed=7 split" in third.reason and third.promote_command


def _tlp(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_show_promote_rollback(tmp_path, uri, capsys):
    for i in (1, 2, 3):  # 2: another --seed, 3: a class more; neither is promoted automatically
        classes = ["cat", "dog"] if i < 3 else ["bird", "cat", "dog"]
        register_model(_model(tmp_path, f"m{i}", classes, str(i)),
                       _dataset(tmp_path, f"d{i}", classes, seed=7 if i == 2 else 42),
                       {**METRICS, "test_accuracy": 0.9 + i / 100}, uri)
    registry = open_registry(uri)
    capsys.readouterr()
    code, out, _ = _tlp(capsys, "models", "list", "pets", "--registry", uri)
    assert code == 0
    rows = out.strip().splitlines()
    assert rows[0].split()[:4] == ["version", "test", "acc", "images"] and rows[-1] == "* champion"
    assert rows[1].startswith("*       1") and "0.9100" in rows[1] and "folder:/photos/pets" in rows[1]
    assert "content-sha256/seed=42" in rows[1] and "first version" in rows[1]
    code, out, _ = _tlp(capsys, "models", "list", "pets", "--registry", uri, "--json")
    listed = json.loads(out)
    assert [r["version"] for r in listed] == ["1", "2", "3"] and [r["champion"] for r in listed] == [True, False,
                                                                                                         False]
    assert listed[2]["images"] == 150 and "classes changed" in listed[2]["decision"]

    code, out, _ = _tlp(capsys, "models", "promote", "pets/3", "--reason", "birds are in scope now",
                        "--by", "alice", "--registry", uri)
    assert code == 0 and "pets version 3 is now the champion (was version 1)" in out
    assert registry.champion_version("pets") == "3"
    code, out, _ = _tlp(capsys, "models", "show", "pets/3", "--registry", uri, "--json")
    shown = json.loads(out)
    assert shown["champion"] and shown["metrics"]["test_accuracy"] == pytest.approx(0.93)
    tags = shown["tags"]
    assert (tags["promoted_by"], tags["promoted_reason"], tags["previous_champion"]) == (
        "alice", "birds are in scope now", "1")
    assert tags["promoted_at"].startswith("20") and shown["params"]["weights"] == "none"
    code, out, _ = _tlp(capsys, "models", "show", "pets/3", "--registry", uri)
    assert code == 0 and "pets version 3 (champion)" in out and "promoted_by" in out

    code, out, _ = _tlp(capsys, "models", "promote", "pets/3", "--reason", "again", "--registry", uri)
    assert code == 0 and "already the champion" in out

    code, out, _ = _tlp(capsys, "models", "rollback", "pets", "--reason", "bird photos mislabelled", "--registry", uri)
    assert code == 0 and "pets version 1 is the champion again (was version 3)" in out
    assert registry.champion_version("pets") == "1"
    assert registry.version("pets", "3").tags["rolled_back_reason"] == "bird photos mislabelled"
    assert registry.version("pets", "1").tags["restored_from"] == "3"

    code, _, err = _tlp(capsys, "models", "rollback", "pets", "--registry", uri)
    assert code == 3 and "records no earlier champion" in err  # version 1 was the first


@pytest.fixture(scope="module")
def one_version(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("one")
    patch = pytest.MonkeyPatch()
    patch.setattr(registration, "infra_validate", lambda *args, **kwargs: InfraResult(True, "stubbed", mode="stub"))
    uri = f"sqlite:///{tmp_path}/reg/registry.db"
    register_model(_model(tmp_path, "m1", ["cat", "dog"], "1"), _dataset(tmp_path, "d1", ["cat", "dog"]), METRICS, uri)
    patch.undo()
    return uri


@pytest.mark.parametrize("argv, code, says", [
    (["models", "list", "dogs"], 3, "no model 'dogs' in the registry"),
    (["models", "show", "pets/9"], 3, "model 'pets' has no version '9' in the registry"),
    (["models", "show", "pets"], 3, "is not NAME/VERSION"),
    (["models", "promote", "pets/1"], 2, "--reason is required"),
    (["models", "promote", "cats/1", "--reason", "x"], 3, "no model 'cats'"),
    (["models", "rollback", "dogs"], 3, "no model 'dogs'"),
    (["models", "list", "pets", "--registry", "postgres://x"], 2, "not a registry URI"),
])
def test_mistakes_get_one_sentence_and_an_exit_code_scripts_can_use(one_version, capsys, argv, code, says):
    if "--registry" not in argv:
        argv = [*argv, "--registry", one_version]
    got, _, err = _tlp(capsys, *argv)
    lines = err.strip().splitlines()
    assert got == code and lines[-1].startswith("tlp: error: ") and says in lines[-1], err
