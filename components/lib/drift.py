"""Image drift: can these photos be told apart from the photos a model was trained on?

A classifier two-sample test (Lopez-Paz & Oquab, "Revisiting classifier two-sample tests", 2017;
what Evidently calls a domain classifier) on the model's own pooled features: the reference
photos are labelled 0, the new ones 1, and a logistic regression scores every photo while it is
held out (stratified k-fold). The ROC AUC of those out-of-fold scores is the drift: 0.5 means
the classifier cannot tell the two apart, 1.0 that it always can. A new photo's out-of-fold
probability of being "new" says how unlike the reference it looks.

numpy only, so the slim serving image (the drift monitor, ``drift_monitor.py``) needs neither
scikit-learn nor SciPy (194 MB installed). The logistic regression is L2-regularised, on standardized
features, with balanced class weights, fitted by Nesterov's accelerated gradient;
tests/unit/test_drift.py checks its AUC against scikit-learn's ``LogisticRegression``.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tlp.components.lib.specs import ConfigError, NotFound

REFERENCE_FILE = "drift_reference.npz"  # inside the model directory: it travels with the model
MAX_REFERENCE = 2000  # photos kept per model: 2,000 x 1,280 float16 = 5 MB for MobileNetV2 alpha 1
MAX_NEW = 2000  # new photos scored at once (a seeded sample beyond that)
MIN_PHOTOS = 10  # per side: fewer make the cross-validated AUC noise
DEFAULT_THRESHOLD = 0.75
FOLDS = 5


@dataclass
class Reference:
    features: np.ndarray  # [N, D] float32 (stored float16, scaled per feature)
    ids: list[str]  # the photos' source ids, as data prep recorded them
    photos: list[str] = field(default_factory=list)  # their content ids (``content_id``); empty in older references


def content_id(prepared: bytes) -> str:
    """A photo's identity: the SHA-256 of the photo as data prep stores it (``encode.prepare_bytes``:
    decoded, resized, JPEG). Two files or requests of one picture are one photo for the drift test,
    whatever their names, and whichever batch the model saw them in."""
    return hashlib.sha256(prepared).hexdigest()


@dataclass
class DriftResult:
    auc: float
    n_reference: int
    n_new: int
    new_indices: np.ndarray  # which of the given new rows were scored (a sample when above MAX_NEW)
    new_scores: np.ndarray  # their out-of-fold probability of being "new"
    seed: int = 0
    ids: list[str] = field(default_factory=list)  # the scored new photos' names, when given

    def drifted(self, threshold: float) -> bool:
        return self.auc >= threshold

    def most_different(self, count: int = 10) -> list[dict]:
        """The new photos that look least like the reference, most unlike first."""
        order = np.argsort(-self.new_scores, kind="stable")[:count]
        names = self.ids or [str(int(i)) for i in self.new_indices]
        return [{"photo": names[i], "score": round(float(self.new_scores[i]), 4)} for i in order]

    def as_dict(self, threshold: float, count: int = 10) -> dict:
        return {"auc": round(self.auc, 4), "threshold": threshold, "drifted": self.drifted(threshold),
                "n": self.n_new, "n_reference": self.n_reference, "most_different": self.most_different(count)}


# --- the reference stored with a model ------------------------------------------------------


def sample_indices(count: int, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``range(count)``, a seeded sample, in increasing order."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def save_reference(model_dir: str, features: np.ndarray, ids: list[str], photos: Sequence[str] = ()) -> str:
    """Writes the reference (float16) into ``model_dir``; returns the file's path. ``photos``: the
    rows' content ids (``content_id``), so that a copy of a training photo is known as one."""
    features = np.asarray(features)
    if features.ndim != 2 or len(features) != len(ids):
        raise ConfigError(f"reference features {features.shape} do not match {len(ids)} photo ids; give one id per row")
    if photos and len(photos) != len(ids):
        raise ConfigError(f"{len(photos)} content ids for {len(ids)} reference photos; give one per row")
    # float16 per feature, relative to the feature's largest magnitude (kept float32): random-weight
    # networks give features of ~1e-12, below float16's smallest number.
    scale = np.abs(features).max(axis=0).astype(np.float32)
    scale[scale == 0] = 1.0
    path = os.path.join(model_dir, REFERENCE_FILE)
    with open(path, "wb") as handle:  # np.savez adds ".npz" to a name; a handle keeps ours
        np.savez_compressed(handle, features=(features / scale).astype(np.float16), scale=scale,
                            ids=np.array(ids, dtype=str), photos=np.array(list(photos), dtype=str))
    return path


def has_reference(model_dir: str) -> bool:
    return os.path.isfile(os.path.join(model_dir, REFERENCE_FILE))


def load_reference(model_dir: str, what: str = "") -> Reference:
    path = os.path.join(model_dir, REFERENCE_FILE)
    if not os.path.isfile(path):
        raise NotFound(
            f"the model {what or model_dir} carries no drift reference ({REFERENCE_FILE}: it was trained before tlp "
            "recorded one); retrain it (tlp run) to get a version that has one."
        )
    with np.load(path) as saved:
        features = saved["features"].astype(np.float32) * saved["scale"]
        photos = [str(i) for i in saved["photos"]] if "photos" in saved.files else []
        return Reference(features, [str(i) for i in saved["ids"]], photos)


# --- the two-sample test --------------------------------------------------------------------


def random_projection(width: int, dimensions: int, seed: int = 0) -> np.ndarray:
    """A fixed Gaussian projection [width, dimensions] (Johnson-Lindenstrauss: distances between
    feature vectors survive it up to a small distortion), the same for the same seed. The served
    watch tests projected features: a tenth of the width makes each recomputation tens of
    milliseconds that stay in a core's cache, where the full test streams megabytes through the
    memory that serving uses."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((width, dimensions)) / np.sqrt(dimensions)).astype(np.float32)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic; ties count half)."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        raise ConfigError("ROC AUC needs both classes; give scores of reference and new photos")
    _, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based, ties share their mean rank
    ranks = average_rank[inverse]
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def stratified_folds(labels: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold number of each row: every class spread evenly over the folds, in a seeded order. Rows
    of one ``groups`` value (one photo on both sides) share a fold, spread as a class of their own."""
    labels = np.asarray(labels)
    if groups is None:
        groups = np.arange(len(labels))
    _, group_of_row = np.unique(np.asarray(groups), return_inverse=True)
    group_of_row = group_of_row.ravel()
    # A group's kind: which sides it has rows on (reference only, new only, both).
    kind = np.zeros(group_of_row.max() + 1 if len(group_of_row) else 0, dtype=np.int64)
    np.bitwise_or.at(kind, group_of_row, np.where(labels > 0, 2, 1))
    rng = np.random.default_rng(seed)
    group_fold = np.empty(len(kind), dtype=np.int64)
    for value in np.unique(kind):
        members = np.flatnonzero(kind == value)
        group_fold[rng.permutation(members)] = np.arange(len(members)) % folds
    return group_fold[group_of_row]


def first_of_each(photos: Sequence[str] | None, count: int) -> np.ndarray:
    """Row indices of the first row of each photo (``photos``: a content id per row; None: every row
    is a photo of its own), in row order."""
    if photos is None or not len(photos):
        return np.arange(count)
    if len(photos) != count:
        raise ConfigError(f"{len(photos)} content ids for {count} feature rows; give one per row")
    _, first = np.unique(np.asarray(photos, dtype=str), return_index=True)
    return np.sort(first)


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, iterations: int = 200,
                 between_steps: Callable[[], None] | None = None) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression with balanced class weights: (weights, bias).

    Minimises the weighted mean log loss + ``l2``/2 |w|^2 by Nesterov's accelerated gradient with
    the step 1/L from a bound on the gradient's Lipschitz constant (no line search, so the same
    inputs give the same bits)."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    n, width = x.shape
    positives = float(y.sum())
    sample_weight = np.where(y > 0, n / (2.0 * positives), n / (2.0 * (n - positives))).astype(np.float32) / n
    # Lipschitz bound: 1/4 (the logistic's curvature) * largest weighted eigenvalue of X^T X, + l2.
    vector = np.ones(width, dtype=np.float32) / np.sqrt(width)
    for _ in range(30):  # power iteration, from a fixed start
        vector = x.T @ (sample_weight * (x @ vector))
        vector /= np.linalg.norm(vector) or 1.0
    largest = float(vector @ (x.T @ (sample_weight * (x @ vector))))
    step = 1.0 / (0.25 * (largest + float(sample_weight.sum())) * 1.1 + l2)  # the bias is a column of ones
    w = np.zeros(width, dtype=np.float32)
    b = 0.0
    w_prev, b_prev = w, b
    for k in range(1, iterations + 1):
        if between_steps is not None:  # e.g. the serving watch waiting while a request is being answered
            between_steps()
        momentum = (k - 1) / (k + 2)
        w_look = w + momentum * (w - w_prev)
        b_look = b + momentum * (b - b_prev)
        error = sample_weight * (_sigmoid(x @ w_look + b_look) - y)
        w_prev, b_prev = w, b
        w = w_look - step * (x.T @ error + l2 * w_look)
        b = b_look - step * float(error.sum())
    return w, b


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warnings for large |z|


def two_sample_test(reference: np.ndarray, new: np.ndarray, *, seed: int = 0, folds: int = FOLDS,
                    max_reference: int = MAX_REFERENCE, max_new: int = MAX_NEW,
                    ids: list[str] | None = None, between_steps: Callable[[], None] | None = None,
                    reference_photos: Sequence[str] | None = None,
                    new_photos: Sequence[str] | None = None) -> DriftResult:
    """Drift of ``new`` [M, D] against ``reference`` [N, D] (both features of the same network).

    ``reference_photos`` / ``new_photos``: each row's content id (``content_id``). A photo counts
    once on each side (its first row: a photo sent again, or filed twice, would otherwise sit in
    both the fitting and the held-out folds, where the classifier remembers it, and read as drift
    however slightly its rows differ between batches), and a photo on both sides has its two rows in
    one fold. Without them every row is a photo of its own. At most ``max_reference`` and
    ``max_new`` photos are used (seeded samples); ``ids`` name the new rows (for
    ``most_different``); ``between_steps`` is called before every step of every fit."""
    reference = np.asarray(reference, dtype=np.float32)
    new = np.asarray(new, dtype=np.float32)
    if reference.ndim != 2 or new.ndim != 2 or reference.shape[1] != new.shape[1]:
        raise ConfigError(
            f"the new photos' features {new.shape} and the reference's {reference.shape} differ in width: they "
            "come from different networks; score photos with the model whose reference they are compared with."
        )
    distinct_reference = first_of_each(reference_photos, len(reference))
    distinct_new = first_of_each(new_photos, len(new))
    for what, rows, given in (("reference", distinct_reference, reference), ("new", distinct_new, new)):
        if len(rows) < MIN_PHOTOS:
            among = f" (among {len(given)} rows)" if len(rows) < len(given) else ""
            raise ConfigError(
                f"{len(rows)} distinct {what} photo(s){among} are too few to tell whether they drifted; give at "
                f"least {MIN_PHOTOS}."
            )
    kept_reference = distinct_reference[sample_indices(len(distinct_reference), max_reference, seed)]
    kept_new = distinct_new[sample_indices(len(distinct_new), max_new, seed + 1)]
    x = np.concatenate([reference[kept_reference], new[kept_new]])
    y = np.concatenate([np.zeros(len(kept_reference)), np.ones(len(kept_new))])
    groups = None
    if reference_photos is not None and len(reference_photos) and new_photos is not None and len(new_photos):
        groups = np.concatenate([np.asarray(reference_photos, dtype=str)[kept_reference],
                                 np.asarray(new_photos, dtype=str)[kept_new]])
    # Unsupervised, so no label leaks: scale from all rows. Constant features stay 0.
    scale = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    folds = max(2, min(folds, len(kept_new), len(kept_reference)))
    assignment = stratified_folds(y, folds, seed, groups)
    scores = np.empty(len(y), dtype=np.float64)
    for fold in range(folds):
        held_out = assignment == fold
        w, b = fit_logistic(x[~held_out], y[~held_out], between_steps=between_steps)
        scores[held_out] = _sigmoid(x[held_out] @ w + b)
    new_scores = scores[len(kept_reference):]
    names = [ids[i] for i in kept_new] if ids is not None else []
    return DriftResult(roc_auc(y, scores), len(kept_reference), len(kept_new), kept_new, new_scores, seed, names)


def short_verdict(auc: float, threshold: float) -> str:
    """The verdict in a few words (the serving page, the gauge's readers)."""
    if auc >= threshold:
        return "drifted"
    return "some difference: watch it" if auc >= 0.6 else "like the training photos"


def verdict(auc: float, threshold: float) -> str:
    if auc >= threshold:
        return (f"drifted: a classifier tells these photos from the training photos (AUC {auc:.3f} >= "
                f"{threshold:g}); look at the photos below, then retrain on photos like them")
    if auc >= 0.6:
        return f"some difference (AUC {auc:.3f}, below the {threshold:g} threshold): watch it"
    return f"like the training photos (AUC {auc:.3f}; 0.5 = indistinguishable)"
