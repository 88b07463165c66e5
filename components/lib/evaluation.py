"""Evaluation in inference mode on every split, and the quality gate.

The gate blesses a model only if it generalises (train - held-out accuracy <= max_gap, the
tutorial's overfitting warning made a rule) and is good enough (test accuracy >= min_accuracy).
Every failed condition is reported, not just the first. The held-out split is validation, or
test in a tuned run (``gap_split``); train accuracy is measured on a seeded sample of the
training photos (``gap_sample_positions``), with its 95% interval (``wilson_interval``), so
evaluation's cost grows with validation + test, not with the whole data set.
"""

from __future__ import annotations

import math

import numpy as np

from tlp.components.lib import model as model_lib
from tlp.components.lib import passes, report
from tlp.components.lib.dataprep import records
from tlp.components.lib.settings import Settings
from tlp.components.lib.specs import ConfigError
from tlp.components.lib.strategy import make_strategy
from tlp.components.lib.training import load_history

MAX_MISCLASSIFIED_SHOWN = 24
GAP_SPLIT = "val"
# A tuned run chose its best trial by validation accuracy (tuning.best). The best of several
# noisy estimates on one split reads high there (16 trials of true accuracy 0.90 on the same 100
# validation photos: the best reads 4.9 points high on average), so train - val would understate
# the winner's overfitting. Test took no part in
# training or in the choice; carving a fourth split out of train would change every run's data
# set (and every champion comparison on it), so the tuned gap is train - test.
TUNED_GAP_SPLIT = "test"
Z_95 = 1.959964  # two-sided 95% normal quantile
# The gap is a difference of two accuracies, each measured on photos: its interval combines both
# (Newcombe's hybrid score interval, 1998, method 10), not train's sampling error alone.
INTERVAL_METHOD = ("95% Newcombe interval of the difference, from the Wilson score intervals of train accuracy "
                   "(finite-population corrected) and of the held-out accuracy")


def gap_split(fine_tune_history: dict | None) -> str:
    """The held-out split the overfitting gap is measured on: validation, or test when the
    model is a tuned run's best trial (the selection step's history carries the trials, ``tuning``)."""
    return TUNED_GAP_SPLIT if (fine_tune_history or {}).get("tuning") else GAP_SPLIT


def gap_sample_positions(split_size: int, sample_size: int | None, seed: int) -> np.ndarray | None:
    """Record positions of the training photos scored for the gap: ``sample_size`` of the split's
    ``split_size``, drawn without replacement with ``seed`` (the same data set and seed give the
    same photos), sorted; None (every photo) when the split is not larger than the sample."""
    if not sample_size or split_size <= sample_size:
        return None
    return np.sort(np.random.default_rng(seed).choice(split_size, size=sample_size, replace=False))


def wilson_interval(correct: int, scored: int, population: int | None = None, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy measured on ``scored`` photos drawn without
    replacement from ``population``. Wilson, not Clopper-Pearson: its coverage stays near 95% for
    accuracies near 1 (a training split's) where Clopper-Pearson is wider than needed. The
    finite-population correction (N - n) / (N - 1) scales the variance, so scoring every photo
    gives the exact accuracy (a zero-width interval)."""
    if scored <= 0:
        return 0.0, 1.0
    p = correct / scored
    correction = (population - scored) / (population - 1) if population and population > 1 else 1.0
    z2 = z * z * max(correction, 0.0)
    denominator = 1 + z2 / scored
    centre = (p + z2 / (2 * scored)) / denominator
    half = math.sqrt(z2 * (p * (1 - p) / scored + z2 / (4 * scored * scored))) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate_model(
    model_dir: str, dataset_dir: str, batch_size: int = 64, splits: tuple[str, ...] = records.SPLITS,
    exclude_source_ids: set[str] | frozenset[str] = frozenset(), train_sample: int | None = None,
    sample_seed: int = 0, strategy=None,
) -> dict:
    """Scores the model on train, val and test. Returns per-split metrics plus, for the test
    split, the confusion matrix, ROC curve (two classes) and misclassified examples.
    ``exclude_source_ids``: photos left out (champion/challenger leaves out test photos the
    champion may have trained on). ``train_sample``: score at most this many training photos,
    drawn with ``sample_seed`` (``gap_sample_positions``); the train metrics then carry
    ``split_examples`` (the split's size) and ``accuracy_interval``. ``strategy``
    (``strategy.make_strategy``): each split's pass is divided over its replicas and gathered
    before the metrics (``passes.run_pass``); None scores in this process."""
    from contextlib import nullcontext

    class_names = model_lib.read_info(model_dir)["class_names"]
    metadata = records.read_metadata(dataset_dir)
    data_classes = metadata["class_names"]
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
        split_size = int(metadata["num_examples"][split])
        positions = gap_sample_positions(split_size, train_sample, sample_seed) if split == "train" else None
        scored = passes.run_pass(
            lambda batch: model_lib.probabilities(model(batch, training=False), num_classes),
            dataset_dir, split, batch_size, strategy=strategy, exclude_source_ids=exclude_source_ids,
            positions=positions,
        )
        y_true, y_prob = scored.labels, scored.outputs
        results[split] = split_metrics(y_true, y_prob, num_classes)
        if split == "train":
            correct = int(np.sum(y_prob.argmax(axis=1) == y_true))
            results[split]["split_examples"] = split_size
            results[split]["accuracy_interval"] = list(wilson_interval(correct, len(y_true), split_size))
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


def gate(
    results: dict, max_gap: float, min_accuracy: float, held_out: str = GAP_SPLIT,
) -> tuple[bool, list[str], float]:
    """Returns (passed, reasons, gap); the gap is train - ``held_out`` accuracy. ``reasons`` lists
    every failed condition, or, when the gate passes, the conditions that were met."""
    train, reference, test = results["train"]["accuracy"], results[held_out]["accuracy"], results["test"]["accuracy"]
    gap = train - reference
    failed: list[str] = []
    met: list[str] = []
    gap_text = f"overfitting gap (train {train:.3f} - {held_out} {reference:.3f}) = {gap:.3f}"
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
    given). Returns passed, reasons, flat_metrics ({split}_{metric}, the gap and its interval),
    gap (``gap_record``) and the full results."""

    # First: --devices cpu:N sets up logical devices before TensorFlow starts.
    strategy = make_strategy(settings.runtime.devices)
    feature_history = load_history(feature_history_path)
    fine_tune_history = load_history(fine_tune_history_path) if fine_tune_history_path else None
    held_out = gap_split(fine_tune_history)
    results = evaluate_model(model_dir, dataset_dir, train_sample=settings.gate.gap_sample,
                             sample_seed=settings.training.seed, strategy=strategy)
    passed, reasons, gap = gate(results, settings.gate.max_gap, settings.gate.min_accuracy, held_out)
    measured = gap_record(results, held_out, settings.training.seed)
    context = report.report_context(results, passed, reasons, gap, feature_history, fine_tune_history,
                                    gap_detail=measured)
    report.write_report(report_path, {**context, "data_checks": data_checks})
    flat = {
        f"{split}_{key}": results[split][key]
        for split in records.SPLITS
        for key in ("accuracy", "loss", "precision", "recall", "auc")
        if np.isfinite(results[split][key])
    }
    flat["gap"] = gap
    flat["gap_low"], flat["gap_high"] = measured["interval"]
    flat["train_accuracy_low"], flat["train_accuracy_high"] = measured["train_accuracy_interval"]
    flat["gap_sample_photos"] = measured["train_photos"]
    print(f"  evaluation: gate {'PASSED' if passed else 'FAILED'}: " + "; ".join(reasons), flush=True)
    print(f"  evaluation: {report.describe_gap(measured)}", flush=True)
    return {"passed": passed, "reasons": reasons, "flat_metrics": flat, "gap": measured, "results": results}


def gap_interval(train_accuracy: float, train_interval: tuple[float, float], held_out: dict) -> tuple[float, float]:
    """95% interval of train - held-out accuracy (Newcombe's hybrid score method): train's interval
    (its sample of the split) and the held-out split's Wilson interval (its photos are a sample of
    the photos the model will meet), combined. Scoring every training photo leaves the held-out
    split's error, which is usually the larger: 90 of 100 validation photos alone span 0.83-0.95."""
    p1, (l1, u1) = train_accuracy, train_interval
    p2 = held_out["accuracy"]
    l2, u2 = wilson_interval(round(p2 * held_out["examples"]), held_out["examples"])
    gap = p1 - p2
    return gap - math.hypot(p1 - l1, u2 - p2), gap + math.hypot(u1 - p1, p2 - l2)


def gap_record(results: dict, held_out: str, seed: int) -> dict:
    """How the gap was measured: the held-out split, the training photos scored of the split's,
    the seed of their sample, and the 95% intervals of train accuracy and of the gap (``gap_interval``:
    train's sampling error and the held-out split's)."""
    train = results["train"]
    low, high = train["accuracy_interval"]
    return {
        "split": held_out,
        "value": train["accuracy"] - results[held_out]["accuracy"],
        "train_photos": train["examples"],
        "train_split_photos": train["split_examples"],
        "seed": seed,
        "train_accuracy_interval": [low, high],
        "interval": list(gap_interval(train["accuracy"], (low, high), results[held_out])),
        "method": INTERVAL_METHOD,
    }

