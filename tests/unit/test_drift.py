"""The classifier two-sample test (components/lib/drift.py) and the reference file, on plain arrays."""

import numpy as np
import pytest

from tlp.components.lib import drift
from tlp.components.lib.specs import ConfigError, NotFound


def _features(rows, seed, shift=0.0, width=64):
    return np.random.default_rng(seed).normal(size=(rows, width)).astype(np.float32) + shift


def test_same_distribution_scores_near_one_half_and_a_shift_scores_high():
    reference = _features(400, 0)
    assert drift.two_sample_test(reference, _features(200, 1)).auc < 0.6
    shifted = drift.two_sample_test(reference, _features(200, 1, shift=0.5))
    assert shifted.auc > 0.9
    assert shifted.drifted(0.75)


def test_auc_matches_scikit_learns_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.preprocessing import StandardScaler

    reference, new = _features(300, 0), _features(150, 1, shift=0.15)
    ours = drift.two_sample_test(reference, new).auc
    x = StandardScaler().fit_transform(np.concatenate([reference, new]))
    y = np.r_[np.zeros(300), np.ones(150)]
    scores = cross_val_predict(LogisticRegression(class_weight="balanced", max_iter=2000), x, y,
                               cv=StratifiedKFold(5, shuffle=True, random_state=0), method="predict_proba")[:, 1]
    assert abs(ours - roc_auc_score(y, scores)) < 0.05


def test_roc_auc_counts_ties_half_as_scikit_learn_does():
    from sklearn.metrics import roc_auc_score

    labels = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.8, 0.9, 0.2, 0.2])
    assert drift.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_deterministic_for_a_seed_and_bounded_samples():
    reference, new = _features(300, 0), _features(120, 1, shift=0.2)
    first = drift.two_sample_test(reference, new, seed=3, max_reference=100, max_new=50)
    again = drift.two_sample_test(reference, new, seed=3, max_reference=100, max_new=50)
    assert first.auc == again.auc and (first.n_reference, first.n_new) == (100, 50)
    assert np.array_equal(first.new_scores, again.new_scores)


def test_most_different_names_the_outliers_first():
    reference = _features(200, 0)
    new = _features(60, 1)
    new[:5] += 3.0  # five photos from another camera
    result = drift.two_sample_test(reference, new, ids=[f"p{i}" for i in range(60)])
    top = {row["photo"] for row in result.most_different(5)}
    assert len(top & {"p0", "p1", "p2", "p3", "p4"}) >= 4
    payload = result.as_dict(0.75)
    assert set(payload) >= {"auc", "threshold", "drifted", "n", "most_different"}


def test_refuses_too_few_photos_and_features_of_another_network():
    with pytest.raises(ConfigError, match="at least 10"):
        drift.two_sample_test(_features(100, 0), _features(3, 1))
    with pytest.raises(ConfigError, match="different networks"):
        drift.two_sample_test(_features(100, 0), _features(30, 1, width=32))


def test_reference_round_trip_keeps_tiny_features(tmp_path):
    # Random-weight networks give features of ~1e-12: plain float16 would store zeros.
    features = _features(50, 0) * 1e-12
    drift.save_reference(str(tmp_path), features, [f"id{i}" for i in range(50)])
    loaded = drift.load_reference(str(tmp_path))
    assert loaded.ids[0] == "id0" and loaded.features.dtype == np.float32
    np.testing.assert_allclose(loaded.features, features, rtol=2e-3, atol=1e-15)
    with pytest.raises(NotFound, match="no drift reference"):
        drift.load_reference(str(tmp_path / "elsewhere"))
