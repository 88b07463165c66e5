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
