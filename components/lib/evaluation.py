"""Evaluation in inference mode on every split, and the quality gate.

The gate blesses a model only if it generalises (train - validation accuracy <= max_gap, the
tutorial's overfitting warning made a rule) and is good enough (test accuracy >= min_accuracy).
Every failed condition is reported, not just the first.
"""

from __future__ import annotations

import numpy as np

from tlp.components.lib import model as model_lib
from tlp.components.lib import passes, report
from tlp.components.lib.dataprep import records
from tlp.components.lib.settings import Settings
from tlp.components.lib.specs import ConfigError
from tlp.components.lib.strategy import make_strategy
from tlp.components.lib.training import load_history

MAX_MISCLASSIFIED_SHOWN = 24


def evaluate_model(
    model_dir: str, dataset_dir: str, batch_size: int = 64, splits: tuple[str, ...] = records.SPLITS,
    exclude_source_ids: set[str] | frozenset[str] = frozenset(), strategy=None,
) -> dict:
    """Scores the model on train, val and test. Returns per-split metrics plus, for the test
    split, the confusion matrix, ROC curve (two classes) and misclassified examples.
    ``exclude_source_ids``: photos left out (champion/challenger leaves out test photos the
    champion may have trained on). ``strategy`` (``strategy.make_strategy``): each split's pass
    is divided over its replicas and gathered before the metrics (``passes.run_pass``); None
    scores in this process."""
    from contextlib import nullcontext

    class_names = model_lib.read_info(model_dir)["class_names"]
    data_classes = records.read_metadata(dataset_dir)["class_names"]
    if data_classes != class_names:
        raise ConfigError(
            f"the model was trained on classes {class_names} but the data set has "
            f"{data_classes}; evaluate on the data set the model was trained on."
        )
    num_classes = len(class_names)
    with strategy.scope() if passes.is_divided(strategy) else nullcontext():
        model = model_lib.load_keras(model_dir)
    results: dict = {"class_names": class_names}
    for split in splits:
        scored = passes.run_pass(
            lambda batch: model_lib.probabilities(model(batch, training=False), num_classes),
            dataset_dir, split, batch_size, strategy=strategy, exclude_source_ids=exclude_source_ids,
        )
        y_true, y_prob = scored.labels, scored.outputs
        results[split] = split_metrics(y_true, y_prob, num_classes)
        if split == "test":
            results["test_details"] = {
                "confusion_matrix": confusion(y_true, y_prob.argmax(axis=1), num_classes),
                "roc": roc(y_true, y_prob) if num_classes == 2 else None,
                "per_class": per_class(y_true, y_prob.argmax(axis=1), class_names),
                "misclassified": misclassified(dataset_dir, scored, class_names),
            }
    return results


def misclassified(dataset_dir: str, scored: passes.PassOutput, class_names: list[str]) -> list[dict]:
    """The first ``MAX_MISCLASSIFIED_SHOWN`` wrongly predicted test photos (record order), with
    their images: read back from the split, which is read only up to the last of them."""
    import tensorflow as tf

    predicted = scored.outputs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != scored.labels)[:MAX_MISCLASSIFIED_SHOWN]
    wanted = {int(scored.positions[i]): i for i in wrong}
    found: dict[int, dict] = {}
    for position, (image, _label, source_id) in enumerate(
        records.read_split(dataset_dir, "test", with_source_ids=True)
    ):
        if position in wanted:
            i = wanted[position]
            found[position] = {
                "source_id": source_id.numpy().decode("utf-8", "replace"),
                "true": class_names[int(scored.labels[i])],
                "predicted": class_names[int(predicted[i])],
                "probability": float(scored.outputs[i].max()),
                "jpeg": tf.io.encode_jpeg(image).numpy(),
            }
            if len(found) == len(wanted):
                break
    return [found[position] for position in sorted(found)]


def split_metrics(y_true: np.ndarray, y_prob: np.ndarray, num_classes: int) -> dict:
    """accuracy, loss (cross-entropy), precision, recall, AUC (macro over classes if > 2)."""
    from sklearn import metrics

    y_pred = y_prob.argmax(axis=1)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(y_prob[np.arange(len(y_true)), y_true], eps, 1.0))))
    average = "binary" if num_classes == 2 else "macro"
    labels = list(range(num_classes))
    present = np.unique(y_true)
    if len(present) < 2:
        auc = float("nan")  # undefined with one class present
    elif num_classes == 2:
        auc = float(metrics.roc_auc_score(y_true, y_prob[:, 1]))
    else:
        auc = float(metrics.roc_auc_score(y_true, y_prob, multi_class="ovr", labels=labels))
    return {
        "accuracy": float(np.mean(y_pred == y_true)),
        "loss": loss,
        "precision": float(metrics.precision_score(y_true, y_pred, average=average, labels=labels, zero_division=0)),
        "recall": float(metrics.recall_score(y_true, y_pred, average=average, labels=labels, zero_division=0)),
        "auc": auc,
        "examples": int(len(y_true)),
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist()


def per_class(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> list[dict]:
    """Precision, recall and image count of each class (one against the rest)."""
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(class_names)))
    precision, recall, _f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return [
        {"name": name, "precision": float(p), "recall": float(r), "images": int(n)}
        for name, p, r, n in zip(class_names, precision, recall, support, strict=True)
    ]


def roc(y_true: np.ndarray, y_prob: np.ndarray) -> dict | None:
    from sklearn.metrics import roc_curve

    if len(np.unique(y_true)) < 2:
        return None
    fpr, tpr, thresholds = roc_curve(y_true, y_prob[:, 1])
    thresholds = np.clip(thresholds, 0.0, 1.0)  # sklearn puts +inf first
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()}


def gate(results: dict, max_gap: float, min_accuracy: float) -> tuple[bool, list[str], float]:
    """Returns (passed, reasons, gap). ``reasons`` lists every failed condition, or, when the
    gate passes, the conditions that were met."""
    train, val, test = (results[s]["accuracy"] for s in records.SPLITS)
    gap = train - val
    failed: list[str] = []
    met: list[str] = []
    gap_text = f"overfitting gap (train {train:.3f} - val {val:.3f}) = {gap:.3f}"
    (failed if gap > max_gap else met).append(
        f"{gap_text} {'exceeds' if gap > max_gap else 'is within'} max_gap {max_gap:.3f}"
    )
    accuracy_ok = test >= min_accuracy
    (met if accuracy_ok else failed).append(
        f"test accuracy {test:.3f} is {'at least' if accuracy_ok else 'below'} "
        f"min_accuracy {min_accuracy:.3f}"
    )
    return (not failed), (failed or met), gap


def evaluate_and_report(
    model_dir: str,
    dataset_dir: str,
    feature_history_path: str,
    fine_tune_history_path: str | None,
    report_path: str,
    settings: Settings,
    data_checks: dict | None = None,
) -> dict:
    """The evaluation step: metrics, gate and HTML report (with the data checks' findings, if
    given). Returns passed, reasons, flat_metrics ({split}_{metric} and gap) and the full results."""

    # First: --devices cpu:N sets up logical devices before TensorFlow starts.
    strategy = make_strategy(settings.runtime.devices)
    results = evaluate_model(model_dir, dataset_dir, strategy=strategy)
    passed, reasons, gap = gate(results, settings.gate.max_gap, settings.gate.min_accuracy)
    feature_history = load_history(feature_history_path)
    fine_tune_history = load_history(fine_tune_history_path) if fine_tune_history_path else None
    context = report.report_context(results, passed, reasons, gap, feature_history, fine_tune_history)
    report.write_report(report_path, {**context, "data_checks": data_checks})
    flat = {
        f"{split}_{key}": results[split][key]
        for split in records.SPLITS
        for key in ("accuracy", "loss", "precision", "recall", "auc")
        if np.isfinite(results[split][key])
    }
    flat["gap"] = gap
    print(f"  evaluation: gate {'PASSED' if passed else 'FAILED'}: " + "; ".join(reasons), flush=True)
    return {"passed": passed, "reasons": reasons, "flat_metrics": flat, "results": results}
