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


def _batch_variants(photos, copies, seed):
    """Each photo ``copies`` times, its rows differing in the 7th digit from copy to copy, as
    MobileNetV2 on CPU gives one image slightly different features alone and inside a batch."""
    rng = np.random.default_rng(seed)
    rows = np.concatenate([photos * (1 + 1e-7 * rng.standard_normal(photos.shape)) for _ in range(copies)])
    names = [f"photo-{i}" for i in range(len(photos))] * copies
    return rows.astype(np.float32), names


def test_copies_of_a_photo_count_once_however_their_rows_differ():
    """40 photos of the reference's kind, each 12 times with rows that differ per batch: by row they
    read as drift (the copies sit in the fitting and the held-out folds); by content, as 40 photos."""
    reference = _features(400, 0)
    rows, photos = _batch_variants(_features(40, 1), 12, seed=2)
    by_row = drift.two_sample_test(reference, rows)
    by_content = drift.two_sample_test(reference, rows, new_photos=photos)
    assert by_row.auc >= 0.75 and by_row.n_new == 480, by_row.auc
    assert by_content.auc < 0.65 and by_content.n_new == 40, by_content.auc
    assert by_content.auc == drift.two_sample_test(reference, rows[:40]).auc  # the first copy of each


def test_a_photo_on_both_sides_sits_in_one_fold():
    labels = np.array([0] * 30 + [1] * 20)
    groups = np.array([f"r{i}" for i in range(30)] + [f"r{i}" for i in range(10)] + [f"n{i}" for i in range(10)])
    folds = drift.stratified_folds(labels, 5, seed=0, groups=groups)
    assert all(folds[i] == folds[30 + i] for i in range(10))
    assert sorted(np.bincount(folds)) == [10] * 5  # still spread evenly


def test_too_few_distinct_photos_are_refused_however_many_rows():
    rows, photos = _batch_variants(_features(5, 1), 10, seed=3)
    with pytest.raises(ConfigError, match="5 distinct new photo"):
        drift.two_sample_test(_features(100, 0), rows, new_photos=photos)


def test_reference_keeps_content_ids_and_reads_older_files(tmp_path):
    features = _features(20, 0)
    drift.save_reference(str(tmp_path), features, [f"id{i}" for i in range(20)], [f"c{i}" for i in range(20)])
    assert drift.load_reference(str(tmp_path)).photos == [f"c{i}" for i in range(20)]
    with open(tmp_path / drift.REFERENCE_FILE, "wb") as handle:  # as written before content ids
        np.savez_compressed(handle, features=features.astype(np.float16), scale=np.ones(64, np.float32),
                            ids=np.array([f"id{i}" for i in range(20)]))
    assert drift.load_reference(str(tmp_path)).photos == []
