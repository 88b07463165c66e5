"""Each kfp component's Python function, called with real kfp artifact objects on tmp_path.

One chain, stage by stage: data prep -> feature extraction -> fine-tuning -> evaluation ->
registration, each stage's outputs feeding the next, as in the pipeline.
"""

import json
import os

import pytest
from kfp import dsl

from tlp.components.data_prep import data_prep
from tlp.components.evaluation import evaluation
from tlp.components.feature_extraction import feature_extraction
from tlp.components.fine_tuning import fine_tuning
from tlp.components.registration import registration


def _artifact(cls, root, name):
    return cls(name=name, uri=os.path.join(str(root), name), metadata={})


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return {"root": tmp_path_factory.mktemp("chain")}


@pytest.fixture(scope="module")
def prepared(chain):
    dataset = _artifact(dsl.Dataset, chain["root"], "dataset")
    result = data_prep.python_func(dataset=dataset, options={"data": "sample:30", "image_size": 64, "seed": 3})
    return dataset, result


def test_data_prep_writes_splits_and_metadata(prepared):
    dataset, result = prepared
    assert json.loads(result.class_names) == ["circles", "squares"]
    counts = (result.train_images, result.val_images, result.test_images)
    assert sum(counts) == 60 and min(counts) >= 2 and result.skipped == 0  # split by content: about 80/10/10
    assert dataset.metadata["num_examples"] == dict(zip(("train", "val", "test"), counts, strict=True))
    assert dataset.metadata["split_method"] == "content-sha256"
    assert dataset.metadata["skipped"] == [] and dataset.metadata["skipped_count"] == 0
    assert os.path.isfile(os.path.join(dataset.path, "metadata.json"))
    assert any(name.startswith("train-") for name in os.listdir(dataset.path))


@pytest.fixture(scope="module")
def head(chain, prepared):
    model = _artifact(dsl.Model, chain["root"], "head_model")
    history = _artifact(dsl.Artifact, chain["root"], "head_history")
    result = feature_extraction.python_func(
        dataset=prepared[0], model=model, history=history,
        options={"alpha": 0.35, "weights": "none", "epochs": 4, "batch_size": 16},
    )
    return model, history, result


def test_feature_extraction_saves_model_and_history(head):
    model, history, result = head
    saved = json.load(open(history.path))
    assert saved["epoch"] == [1, 2, 3, 4] and len(saved["val_accuracy"]) == 4
    assert result.val_accuracy == saved["val_accuracy"][-1]
    info = json.load(open(os.path.join(model.path, "model_info.json")))
    assert (info["epochs_done"], info["options"]["weights"], info["phase"]) == (4, "none", "feature_extraction")
    assert info["options"]["dropout"] == 0.2 and info["options"]["epochs"] == 4  # lineage from the declaration


@pytest.fixture(scope="module")
def tuned(chain, prepared, head):
    model = _artifact(dsl.Model, chain["root"], "model")
    history = _artifact(dsl.Artifact, chain["root"], "tune_history")
    result = fine_tuning.python_func(
        dataset=prepared[0], base_model=head[0], model=model, history=history,
        options={"fine_tune_at": 100, "fine_tune_epochs": 2, "batch_size": 16, "devices": "auto"},
    )
    return model, history, result


def test_fine_tuning_continues_epochs_and_exports_servable(tuned):
    import tensorflow as tf

    model, history, result = tuned
    assert result.replicas == 1
    assert json.load(open(history.path))["epoch"] == [5, 6]  # continues after 4 head epochs
    assert os.path.isfile(os.path.join(model.path, "saved_model.pb"))
    signature = tf.saved_model.load(model.path).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["image_bytes"]
    assert set(signature.structured_outputs) == {"probabilities", "label", "class_index", "score"}


@pytest.fixture(scope="module")
def scored(chain, prepared, head, tuned):
    metrics = _artifact(dsl.Metrics, chain["root"], "metrics")
    classification = _artifact(dsl.ClassificationMetrics, chain["root"], "classification")
    report = _artifact(dsl.HTML, chain["root"], "report")
    passed = evaluation.python_func(
        dataset=prepared[0], model=tuned[0], feature_history=head[1], fine_tune_history=tuned[1],
        metrics=metrics, classification_metrics=classification, report=report,
        options={"max_gap": 1.0, "min_accuracy": 0.0},
    )
    return metrics, classification, report, passed


def test_evaluation_logs_metrics_matrix_and_report(scored, prepared):
    metrics, classification, report, passed = scored
    assert passed is True
    for split in ("train", "val", "test"):
        for key in ("accuracy", "loss", "precision", "recall"):
            assert f"{split}_{key}" in metrics.metadata
    assert metrics.metadata["gap"] == pytest.approx(
        metrics.metadata["train_accuracy"] - metrics.metadata["val_accuracy"]
    )
    # A split smaller than --gap-sample is scored whole: the gap is today's, train accuracy exact, and the
    # gap's interval is validation's sampling error alone (a few validation photos: wide).
    assert metrics.metadata["gap_split"] == "val" and report.metadata["gap"]["split"] == "val"
    assert metrics.metadata["gap_sample_photos"] == prepared[1].train_images
    assert metrics.metadata["train_accuracy_low"] == metrics.metadata["train_accuracy_high"] == pytest.approx(
        metrics.metadata["train_accuracy"])
    assert metrics.metadata["gap_low"] <= metrics.metadata["gap"] <= metrics.metadata["gap_high"]
    assert metrics.metadata["gap_high"] - metrics.metadata["gap_low"] > 0.05
    rows = classification.metadata["confusionMatrix"]["rows"]
    assert sum(sum(row["row"]) for row in rows) == prepared[1].test_images  # every test image counted once
    html = open(report.path, encoding="utf-8").read()
    assert "Learning curves" in html and "Misclassified test images" in html
    assert "data:image/png;base64," in html and "Confusion matrix" in html
    assert report.metadata["gate_reasons"]


def test_evaluation_gate_fails_with_every_reason(chain, prepared, head, tuned):
    report = _artifact(dsl.HTML, chain["root"], "report_strict")
    passed = evaluation.python_func(
        dataset=prepared[0], model=tuned[0], feature_history=head[1], fine_tune_history=tuned[1],
        metrics=_artifact(dsl.Metrics, chain["root"], "m2"),
        classification_metrics=_artifact(dsl.ClassificationMetrics, chain["root"], "c2"),
        report=report, options={"max_gap": 0.0, "min_accuracy": 1.0},
    )
    reasons = report.metadata["gate_reasons"]
    if passed:  # only possible with a perfect model on every split
        assert all("within" in r or "at least" in r for r in reasons)
    else:
        assert "FAILED" in open(report.path, encoding="utf-8").read()
        assert all(("exceeds" in r) or ("below" in r) for r in reasons)


def test_a_tuned_models_gap_is_train_minus_test_and_says_so(chain, prepared, head, tuned):
    """Issue 28.3: validation chose a tuned run's trial (the selection's history carries the
    trials), so its gap is measured on test, and the metrics, the gate's reasons and the report say so."""
    history = json.load(open(tuned[1].path))
    trial = {"params": {"dropout": 0.2}, "val_accuracy": history["val_accuracy"][-1],
             "val_loss": history["val_loss"][-1], "seconds": 1.0, "val_curve": history["val_accuracy"]}
    selected = _artifact(dsl.Artifact, chain["root"], "selected_history")
    with open(selected.path, "w") as handle:
        json.dump({**history, "tuning": {"trials": [trial], "best": trial}}, handle)
    metrics = _artifact(dsl.Metrics, chain["root"], "tuned_metrics")
    report = _artifact(dsl.HTML, chain["root"], "tuned_report")
    evaluation.python_func(
        dataset=prepared[0], model=tuned[0], feature_history=head[1], fine_tune_history=selected,
        metrics=metrics, classification_metrics=_artifact(dsl.ClassificationMetrics, chain["root"], "tuned_c"),
        report=report, options={"max_gap": 1.0, "min_accuracy": 0.0},
    )
    measured = metrics.metadata
    assert f"- test {measured['test_accuracy']:.3f})" in report.metadata["gate_reasons"][0]
    assert measured["gap"] == pytest.approx(measured["train_accuracy"] - measured["test_accuracy"])
    assert measured["gap_split"] == "test"
    assert "Measured on the test split, because validation chose" in " ".join(open(report.path).read().split())


def test_gap_sample_scores_a_seeded_sample_of_the_training_photos(chain, prepared, head, tuned):
    """Issue 29.2: --gap-sample 10 scores 10 of the training photos, the same 10 again with the same
    seed, with a 95% interval around the sample's accuracy; the report says which photos."""
    runs = []
    for name in ("sampled_a", "sampled_b"):
        metrics = _artifact(dsl.Metrics, chain["root"], f"{name}_metrics")
        report = _artifact(dsl.HTML, chain["root"], f"{name}_report")
        evaluation.python_func(
            dataset=prepared[0], model=tuned[0], feature_history=head[1], fine_tune_history=tuned[1],
            metrics=metrics, classification_metrics=_artifact(dsl.ClassificationMetrics, chain["root"], f"{name}_c"),
            report=report, options={"max_gap": 1.0, "min_accuracy": 0.0, "gap_sample": 10, "seed": 5},
        )
        runs.append((metrics.metadata, report))
    (first, report), (again, _) = runs
    assert first["gap_sample_photos"] == 10 and first == again
    assert first["train_accuracy_low"] < first["train_accuracy_high"]
    assert first["train_accuracy_low"] <= first["train_accuracy"] <= first["train_accuracy_high"]
    assert first["gap_low"] == pytest.approx(first["train_accuracy_low"] - first["val_accuracy"])
    page = " ".join(open(report.path, encoding="utf-8").read().split())
    assert f"a sample of 10 of the {prepared[1].train_images} training photos, drawn with seed 5" in page
    assert report.metadata["gap"]["train_photos"] == 10


def test_registration_records_lineage(chain, prepared, tuned, scored):
    uri = f"sqlite:///{chain['root']}/registry.db"
    final_report = _artifact(dsl.HTML, chain["root"], "registered_report")
    result = registration.python_func(
        model=tuned[0], dataset=prepared[0], metrics=scored[0], report=scored[2],
        registered_report=final_report, options={"registry": uri, "model_name": ""},
    )
    assert (result.name, result.version, result.champion) == ("sample", "1", True)
    page = open(final_report.path, encoding="utf-8").read()
    assert "Registered <b>sample</b> version <b>1</b>" in page and "first version of the model" in page
    assert "Learning curves" in page  # the evaluation report is kept whole
    again = registration.python_func(
        model=tuned[0], dataset=prepared[0], metrics=scored[0], report=scored[2],
        registered_report=_artifact(dsl.HTML, chain["root"], "again_report"),
        options={"registry": uri, "model_name": ""},
    )
    assert again.version == "1"  # the same artifact is registered once
    from tlp.components.lib.registry import open_registry

    version = open_registry(uri).client.get_model_version("sample", "1")
    assert version.tags["data_spec"] == "sample:30"
    assert version.tags["weights_spec"] == "none"
    assert version.tags["data_fingerprint"] == prepared[0].metadata["fingerprint"]
    # How the gap was measured: its split as a tag, its sample and interval as metrics.
    assert version.tags["gap_split"] == "val"
    for key in ("gap_low", "gap_high", "train_accuracy_low", "train_accuracy_high", "gap_sample_photos"):
        assert float(version.tags[f"metric.{key}"]) == pytest.approx(scored[0].metadata[key], abs=1e-6)
    assert float(version.tags["metric.test_accuracy"]) == pytest.approx(scored[0].metadata["test_accuracy"], abs=1e-6)


@pytest.mark.slow  # trains end to end: make test runs it, make test-fast does not
def test_champion_moves_only_to_a_challenger_at_least_as_good(chain, prepared, head, tuned, scored):
    """Champion/challenger on the current test split: a worse version is registered but does
    not take the alias; an equal-or-better one (or one within the tolerance) does."""
    import shutil

    from tlp.components.lib.registration import register_model
    from tlp.components.lib.registry import open_registry

    uri = f"sqlite:///{chain['root']}/champion/registry.db"
    dataset = prepared[0].path
    first = register_model(tuned[0].path, dataset, dict(scored[0].metadata), uri, "pets")
    assert first.champion and "first version" in first.reason

    def another_artifact(name):
        """The same servable model with other bytes: a new version, served and scored alike."""
        copy = str(chain["root"] / name)
        shutil.copytree(tuned[0].path, copy)
        with open(os.path.join(copy, "assets", "note.txt"), "w") as handle:
            handle.write(name)
        return copy

    worse = register_model(another_artifact("worse"), dataset, {"test_accuracy": 0.0}, uri, "pets")
    assert (worse.version, worse.champion) == ("2", False)
    assert "stays behind champion version 1" in worse.reason and "same test split" in worse.reason
    assert worse.infra_validation["passed"]

    within = another_artifact("within_tolerance")
    tolerated = register_model(within, dataset, {"test_accuracy": 0.0}, uri, "pets", champion_tolerance=1.0)
    assert (tolerated.version, tolerated.champion) == ("3", True) and "takes over" in tolerated.reason

    registry = open_registry(uri)
    assert registry.champion_version("pets") == "3"
    assert registry.client.get_model_version("pets", "2").tags["champion_decision"] == worse.reason


def test_a_model_that_cannot_be_served_is_never_promoted(chain, prepared, head):
    """Infra validation: the feature-extraction output is a Keras file, not a servable model; it
    is registered, but it is served once first and so can never take the alias."""
    from tlp.components.lib.registration import register_model

    uri = f"sqlite:///{chain['root']}/unservable/registry.db"
    registered = register_model(head[0].path, prepared[0].path, {"test_accuracy": 1.0}, uri, "pets")
    assert (registered.version, registered.champion) == ("1", False)
    assert registered.reason.startswith("not promoted: infra validation FAILED")
    assert registered.infra_validation["passed"] is False


@pytest.mark.slow  # two conversions, each scored in its own process
def test_litert_export_records_the_variants_within_the_drop_with_the_registered_version(chain, prepared, tuned, scored):
    from tlp.components.lib.registry import open_registry
    from tlp.components.litert_export import litert_export

    uri = f"sqlite:///{chain['root']}/registry.db"
    registered_report = _artifact(dsl.HTML, chain["root"], "registered_report_for_litert")
    registered = registration.python_func(
        model=tuned[0], dataset=prepared[0], metrics=scored[0], report=scored[2],
        registered_report=registered_report, options={"registry": uri, "model_name": ""},
    )
    exported = _artifact(dsl.Model, chain["root"], "litert")
    report = _artifact(dsl.HTML, chain["root"], "litert_report")
    result = litert_export.python_func(
        model=tuned[0], dataset=prepared[0], registered_report=registered_report, litert=exported, report=report,
        registry=uri, name=registered.name, version=registered.version, variants="float32,dynamic",
        max_quantization_drop=0.01,
    )
    outcome = json.load(open(os.path.join(exported.path, "litert.json")))
    passed = outcome["gate"]["passed"]
    assert "float32" in passed  # the model itself: no prediction changes
    assert result.registered.split(",") == passed
    assert set(filter(None, result.not_registered.split(","))) == {"float32", "dynamic"} - set(passed)
    registry = open_registry(uri)
    version = registry.client.get_model_version(registered.name, registered.version)
    run = registry.client.get_run(version.run_id)
    logged = {item.path for item in registry.client.list_artifacts(version.run_id, "litert")}
    assert logged == {f"litert/model_{v}.tflite" for v in passed} | {"litert/labels.txt", "litert/litert.json"}
    assert run.data.metrics["litert.float32.size_bytes"] == os.path.getsize(os.path.join(exported.path,
                                                                                         "model_float32.tflite"))
    assert version.tags["litert.variants"] == ",".join(passed)
    assert version.tags["litert.dynamic.gate"] == outcome["gate"]["reasons"]["dynamic"]
    page = open(report.path, encoding="utf-8").read()
    assert "On the device (LiteRT)" in page and "Learning curves" in page  # registration's report, plus the table
    assert exported.metadata["reasons"] == outcome["gate"]["reasons"]
