import numpy as np
import pytest

from tlp.components.lib import evaluation


def _results(train, val, test):
    return {s: {"accuracy": a} for s, a in (("train", train), ("val", val), ("test", test))}


def test_gate_passes_and_says_why():
    passed, reasons, gap = evaluation.gate(_results(0.97, 0.95, 0.96), 0.05, 0.90)
    assert passed and gap == pytest.approx(0.02)
    assert any("within max_gap" in r for r in reasons)


def test_gate_reports_every_failed_condition():
    passed, reasons, gap = evaluation.gate(_results(1.0, 0.80, 0.85), 0.05, 0.90)
    assert not passed and gap == pytest.approx(0.20)
    assert len(reasons) == 2
    assert "exceeds max_gap 0.050" in reasons[0]
    assert "test accuracy 0.850 is below min_accuracy 0.900" in reasons[1]


def test_gate_fails_on_accuracy_alone():
    passed, reasons, _ = evaluation.gate(_results(0.80, 0.80, 0.70), 0.05, 0.90)
    assert not passed and reasons == ["test accuracy 0.700 is below min_accuracy 0.900"]


def test_split_metrics_binary():
    y_true = np.array([0, 0, 1, 1])
    y_prob = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    m = evaluation.split_metrics(y_true, y_prob, 2)
    assert m["accuracy"] == 0.75 and m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0
    assert m["auc"] == 1.0
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.7])))
    assert evaluation.confusion(y_true, y_prob.argmax(1), 2) == [[1, 1], [0, 2]]


def test_split_metrics_multiclass():
    y_true = np.array([0, 1, 2, 2])
    y_prob = np.eye(3)[[0, 1, 2, 1]] * 0.7 + 0.1
    m = evaluation.split_metrics(y_true, y_prob, 3)
    assert m["accuracy"] == 0.75 and 0 < m["auc"] <= 1


def test_roc_curve_is_bounded():
    roc = evaluation.roc(np.array([0, 1, 1, 0]), np.array([[0.8, 0.2], [0.1, 0.9], [0.6, 0.4], [0.3, 0.7]]))
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0
    assert all(0.0 <= t <= 1.0 for t in roc["thresholds"])


# --- the gap: which split, and train accuracy from a sample (issue 28.3, 29.2) ------------------


def test_a_tuned_models_gap_is_measured_on_test_not_on_the_split_that_chose_it():
    """The selection step's history carries the trials: validation chose the model, so its
    accuracy reads high there and the gap is train - test."""
    assert evaluation.gap_split({"epoch": [3], "val_accuracy": [0.9]}) == "val"
    assert evaluation.gap_split(None) == "val"
    tuned = {"epoch": [3], "val_accuracy": [0.99], "tuning": {"trials": [], "best": {"params": {}}}}
    assert evaluation.gap_split(tuned) == "test"
    # The winner's validation accuracy flatters it: 0.99 - 0.98 would pass, 0.99 - 0.90 does not.
    passed, reasons, gap = evaluation.gate(_results(0.99, 0.98, 0.90), 0.05, 0.5, held_out="test")
    assert not passed and gap == pytest.approx(0.09)
    assert reasons[0] == "overfitting gap (train 0.990 - test 0.900) = 0.090 exceeds max_gap 0.050"


def test_gap_sample_is_seeded_sorted_distinct_and_every_photo_when_the_split_is_small():
    drawn = evaluation.gap_sample_positions(100_000, 2_000, seed=42)
    assert len(drawn) == 2_000 and len(set(drawn.tolist())) == 2_000
    assert (np.diff(drawn) > 0).all() and drawn[0] >= 0 and drawn[-1] < 100_000
    assert (drawn == evaluation.gap_sample_positions(100_000, 2_000, seed=42)).all()  # reproducible
    assert not (drawn == evaluation.gap_sample_positions(100_000, 2_000, seed=43)).all()
    assert evaluation.gap_sample_positions(20_000, 20_000, seed=42) is None  # every photo
    assert evaluation.gap_sample_positions(64, 20_000, seed=42) is None


def test_wilson_interval_matches_the_published_formula_and_is_exact_on_the_whole_split():
    # Wilson's score interval for 95 of 100 at z = 1.96, worked by hand: 0.8882 to 0.9785.
    low, high = evaluation.wilson_interval(95, 100)
    assert (round(low, 4), round(high, 4)) == (0.8882, 0.9785)
    # Scoring a sample of a finite split: narrower than the unbounded-population interval, exact at n = N.
    assert evaluation.wilson_interval(95, 100, population=100) == (0.95, 0.95)
    corrected = evaluation.wilson_interval(95, 100, population=200)
    assert low < corrected[0] < 0.95 < corrected[1] < high
    low, high = evaluation.wilson_interval(20_000, 20_000, population=9_000_000)
    assert high == pytest.approx(1.0) and 0.9997 < low < 0.9999  # all right is not certainty about the rest


def test_reading_at_positions_gives_exactly_those_records(sample_dataset):
    from tlp.components.lib.dataprep import records

    def source_ids(**read):
        return [s.decode() for _, _, s in records.read_split(sample_dataset, "train", with_source_ids=True, **read)
                .as_numpy_iterator()]

    every = source_ids()
    positions = evaluation.gap_sample_positions(len(every), 10, seed=3)
    assert source_ids(positions=positions) == [every[i] for i in positions]
    assert source_ids(positions=[0, len(every) - 1]) == [every[0], every[-1]]


def test_the_gaps_interval_holds_the_held_out_splits_sampling_error_too():
    """Review: scoring every training photo made the gap's interval zero-width while validation's
    100 photos alone leave about +-6 points; the interval of a difference holds both errors."""
    results = {"train": {"accuracy": 0.95, "examples": 1000, "split_examples": 1000,
                         "accuracy_interval": list(evaluation.wilson_interval(950, 1000, 1000))},
               "val": {"accuracy": 0.90, "examples": 100}}
    measured = evaluation.gap_record(results, "val", seed=42)
    low, high = measured["interval"]
    assert measured["value"] == pytest.approx(0.05)
    # Newcombe's hybrid score interval, worked by hand: val's Wilson 90/100 is 0.8256-0.9448, train exact.
    assert low == pytest.approx(0.05 - (0.9448 - 0.90), abs=2e-4)
    assert high == pytest.approx(0.05 + (0.90 - 0.8256), abs=2e-4)
    # A sample of the training split widens it further, never narrows it.
    results["train"]["split_examples"] = 100_000
    results["train"]["accuracy_interval"] = list(evaluation.wilson_interval(950, 1000, 100_000))
    wider = evaluation.gap_record(results, "val", seed=42)["interval"]
    assert wider[0] < low and wider[1] > high
