"""The data checks against the champion's data: a shrunk data set or a shifted class stops the run
before training with one sentence naming the numbers and the option; added or removed classes and
unchanged data are reported."""

import json

import pytest
from kfp import dsl

from tlp.components.data_checks import data_checks
from tlp.components.lib import datachecks
from tlp.components.lib.registry import ModelVersion, open_registry
from tlp.components.lib.specs import ConfigError

SPLIT = {"method": "content-sha256", "seed": 42, "moved": []}


def _metadata(per_class: dict, fingerprint="f1", source="folder:/photos/pets"):
    names = sorted(per_class)
    counts = {"train": {c: per_class[c] - 2 * (per_class[c] // 10) for c in names},
              "val": {c: per_class[c] // 10 for c in names}, "test": {c: per_class[c] // 10 for c in names}}
    return {"source": source, "class_names": names, "counts": counts, "source_fingerprint": fingerprint,
            "split": SPLIT}


def _champion(per_class: dict, fingerprint="f1", version="3"):
    total = sum(per_class.values())
    return ModelVersion("pets", version, "2026-11-01T03:00:00+00:00", ["champion"], {"test_accuracy": 0.95}, {
        "data_counts": json.dumps({"train": total - 20, "val": 10, "test": 10}),
        "class_counts": json.dumps(per_class), "class_names": json.dumps(sorted(per_class)),
        "source_fingerprint": fingerprint, "split_method": "content-sha256", "split_seed": "42",
    })


def _compare(now, before, **limits):
    limits = {"max_data_drop": 0.10, "max_class_shift": 0.15, **limits}
    return datachecks.compare(_metadata(now), _champion(before), name="pets", **limits)


def test_thirty_percent_fewer_photos_stop_the_run_and_the_option_lets_it_go_on():
    found = _compare({"cat": 350, "dog": 350}, {"cat": 500, "dog": 500})
    assert not found["passed"] and found["drop"] == 0.3
    sentence = datachecks.stop_sentence(found)
    assert "700 photos vs 1,000 for champion version 3 of 'pets' (30% fewer, more than --max-data-drop 0.1)" \
        in sentence and "pass --max-data-drop 0.3 to train on it anyway" in sentence
    assert sentence.startswith("the data checks stopped the run before training: ") and sentence.endswith(".")
    assert "\n" not in sentence
    assert _compare({"cat": 350, "dog": 350}, {"cat": 500, "dog": 500}, max_data_drop=1.0)["passed"]
    assert _compare({"cat": 460, "dog": 460}, {"cat": 500, "dog": 500})["passed"]  # 8% fewer: within 10%


def test_a_removed_class_stops_the_run_through_the_drop_and_is_named():
    found = _compare({"cat": 500, "dog": 500}, {"bird": 500, "cat": 500, "dog": 500})
    assert not found["passed"] and found["removed"] == ["bird"] and found["class_set_changed"]
    assert "gone: class(es) 'bird'" in datachecks.stop_sentence(found)
    assert any("removed 'bird'" in f and "not promoted automatically" in f for f in found["findings"])


def test_a_shifted_class_stops_the_run_and_an_added_class_does_not():
    found = _compare({"cat": 800, "dog": 300}, {"cat": 500, "dog": 500})
    assert not found["passed"]
    assert any("class 'cat' is 73% of the photos vs 50% for champion version 3 (moved 0.23, more than "
               "--max-class-shift 0.15); pass --max-class-shift 0.23" in p for p in found["problems"])
    added = _compare({"bird": 400, "cat": 500, "dog": 500}, {"cat": 500, "dog": 500})
    assert added["passed"] and added["added"] == ["bird"]  # shares compared over the classes both have
    assert added["shares"]["cat"]["shift"] == 0.0


def test_every_failed_check_is_in_the_one_sentence():
    found = _compare({"cat": 500, "dog": 100}, {"cat": 500, "dog": 500})
    sentence = datachecks.stop_sentence(found)
    assert "--max-data-drop" in sentence and "--max-class-shift" in sentence and len(found["problems"]) == 3


def test_unchanged_data_and_no_champion_are_reported():
    same = datachecks.compare(_metadata({"cat": 50, "dog": 50}), _champion({"cat": 50, "dog": 50}), name="pets",
                              max_data_drop=0.1, max_class_shift=0.15)
    assert same["same_data"] and "the photos and their split are the same" in same["findings"][0]
    other_seed = _metadata({"cat": 50, "dog": 50})
    other_seed["split"] = {**SPLIT, "seed": 7}
    assert not datachecks.compare(other_seed, _champion({"cat": 50, "dog": 50}), name="pets", max_data_drop=0.1,
                                  max_class_shift=0.15)["same_data"]
    first = datachecks.compare(_metadata({"cat": 50, "dog": 50}), None, name="pets", max_data_drop=0.1,
                               max_class_shift=0.15)
    assert first["passed"] and first["champion"] is None and "nothing to compare" in first["findings"][0]


def test_an_old_champion_without_class_counts_is_compared_on_totals():
    old = _champion({"cat": 50, "dog": 50})
    del old.tags["class_counts"]
    found = datachecks.compare(_metadata({"cat": 90, "dog": 10}), old, name="pets", max_data_drop=0.1,
                               max_class_shift=0.15)
    assert found["passed"] and any("records no per-class counts" in f for f in found["findings"])


def _dataset(tmp_path, per_class, name="dataset"):
    directory = tmp_path / name
    directory.mkdir()
    (directory / "metadata.json").write_text(json.dumps(_metadata(per_class, fingerprint="f2")))
    return dsl.Dataset(name=name, uri=str(directory), metadata={})


def test_the_component_reads_the_champion_from_the_mlflow_registry(tmp_path):
    uri = f"sqlite:///{tmp_path}/registry.db"
    registry = open_registry(uri)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "saved_model.pb").write_bytes(b"champion")
    champion = _champion({"cat": 500, "dog": 500})
    registered = registry.register(str(model_dir), "pets", metrics={"test_accuracy": 0.95}, params={},
                                   tags=champion.tags)
    registry.set_champion("pets", registered.version)
    options = {"registry": uri, "model_name": "", "max_data_drop": 0.1, "max_class_shift": 0.15}

    findings = dsl.Artifact(name="findings", uri=str(tmp_path / "findings.json"), metadata={})
    with pytest.raises(ConfigError, match=r"700 photos vs 1,000 for champion version 1 of 'pets' \(30% fewer"):
        data_checks.python_func(dataset=_dataset(tmp_path, {"cat": 350, "dog": 350}), findings=findings,
                                metrics=_metrics(tmp_path, "m1"), options=options)
    assert json.loads((tmp_path / "findings.json").read_text())["passed"] is False  # kept for the person

    findings = dsl.Artifact(name="findings", uri=str(tmp_path / "findings2.json"), metadata={})
    metrics = _metrics(tmp_path, "m2")
    result = data_checks.python_func(dataset=_dataset(tmp_path, {"cat": 350, "dog": 350}, "again"),
                                     findings=findings, metrics=metrics, options={**options, "max_data_drop": 1.0})
    assert (result.same_data, result.class_set_changed) == (False, False)
    assert findings.metadata["passed"] is True and findings.metadata["champion"] == "1"
    # A champion registered before tlp kept drift references: said, not a failure, no metric.
    assert any("champion version 1 has no drift reference" in f for f in findings.metadata["findings"])
    assert json.loads((tmp_path / "findings2.json").read_text())["image_drift_auc"] is None
    assert "image_drift_auc" not in metrics.metadata


def _metrics(tmp_path, name):
    return dsl.Metrics(name=name, uri=str(tmp_path / name), metadata={})


def test_the_image_drift_is_measured_against_a_champion_without_max_image_drift(tmp_path, sample_dataset,
                                                                                tuned_model):
    """The champion's reference is always compared; --max-image-drift 0 (the default) only means it
    cannot stop the run. The AUC reaches the findings and the step's kfp Metrics."""
    with open(f"{sample_dataset}/metadata.json") as handle:
        metadata = json.load(handle)
    uri = f"sqlite:///{tmp_path}/registry.db"
    registry = open_registry(uri)
    per_class = {c: sum(metadata["counts"][s][c] for s in metadata["counts"]) for c in metadata["class_names"]}
    champion = _champion(per_class)
    registered = registry.register(tuned_model[0], "pets", metrics={"test_accuracy": 0.9}, params={},
                                   tags=champion.tags)
    registry.set_champion("pets", registered.version)
    findings = dsl.Artifact(name="findings", uri=str(tmp_path / "findings.json"), metadata={})
    metrics = _metrics(tmp_path, "metrics")
    data_checks.python_func(dataset=dsl.Dataset(name="d", uri=sample_dataset, metadata={}), findings=findings,
                            metrics=metrics, options={"registry": uri, "model_name": "pets", "max_data_drop": 0.1,
                                                      "max_class_shift": 0.15, "max_image_drift": 0.0})
    auc = json.loads((tmp_path / "findings.json").read_text())["image_drift_auc"]
    assert 0.0 <= auc <= 0.65  # its own training photos
    assert metrics.metadata["image_drift_auc"] == auc
    assert any(f.startswith("image drift of the new training photos vs the champion's: AUC")
               for f in findings.metadata["findings"])
    assert findings.metadata["passed"] is True
