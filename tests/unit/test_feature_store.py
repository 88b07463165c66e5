"""Feature extraction streams the pooled features to disk and the head trains from the file
(feature_store.py): never all features in memory, the same head as training on in-memory arrays."""

import tracemalloc

import numpy as np
import pytest

from tests.conftest import SMALL, settings
from tlp.components.lib import feature_store
from tlp.components.lib.specs import ServiceError


def test_written_batches_read_back_as_one_array_with_numpys_mean_and_variance(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_store, "READ_ROWS", 7)  # statistics over several chunks
    rng = np.random.default_rng(0)
    features, labels = rng.normal(3, 2, (100, 1280)).astype(np.float32), rng.integers(0, 2, 100)
    path = str(tmp_path / "train_features.npy")
    writer = feature_store.FeatureWriter(path, 100)
    for start in range(0, 100, 9):
        writer.add(features[start:start + 9], labels[start:start + 9])
    writer.finish(dim=1280)
    assert np.array_equal(np.load(path), features)
    stored = feature_store.FeatureFile(path)
    mean, var = stored.mean_and_var()
    # Bit for bit: the head's standardization must not depend on how the features were stored.
    assert np.array_equal(mean, features.mean(axis=0)) and np.array_equal(var, features.var(axis=0))
    assert np.array_equal(stored.gather([99, 3, 3, 0]), features[[99, 3, 3, 0]])
    assert np.array_equal(stored.labels, labels)
    stored.close()


def test_a_features_file_missing_rows_is_refused_and_removed(tmp_path):
    path = str(tmp_path / "val_features.npy")
    writer = feature_store.FeatureWriter(path, 10)
    writer.add(np.zeros((4, 8), np.float32), np.zeros(4))
    with pytest.raises(ServiceError, match="wrote 4 rows where the split has 10"):
        writer.finish(dim=8)
    writer.close()
    assert not list(tmp_path.iterdir())


def test_feature_extraction_never_holds_all_features_in_memory(sample_dataset, tmp_path):
    """A backbone with large outputs (its 64x64x3 pixels 4 times: 49,152 floats, 197 KB a photo): the
    peak of Python and numpy allocations (tracemalloc) stays well under one copy of all the
    features, where gathering them (and concatenating: two copies) peaked above it."""
    import tensorflow as tf

    from tlp.components.lib import training

    def backbone(batch, training=False):
        return tf.tile(tf.reshape(tf.cast(batch, tf.float32), [tf.shape(batch)[0], -1]), [1, 4])

    backbone(tf.zeros([1, 64, 64, 3], tf.uint8))  # imports and first-call set-up before measuring
    tracemalloc.start()
    try:
        found = training._cached_features(backbone, sample_dataset, ("train",), 8, False, None, str(tmp_path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stored = found["train"]
    all_features = stored.rows * stored.row_bytes
    assert stored.rows >= 48 and stored.dim == 4 * 64 * 64 * 3
    assert peak < all_features / 2, f"peak {peak / 1e6:.1f} MB for {all_features / 1e6:.1f} MB of features"
    stored.close()


def test_the_head_trained_from_the_file_equals_the_head_trained_on_arrays(sample_dataset, tmp_path):
    """train_head (features streamed to disk) against the tutorial's head.fit on in-memory arrays
    with the same seed: bit-identical weights, dropout and shuffling included."""
    from tlp.components.lib import model as model_lib
    from tlp.components.lib import training

    chosen = settings(alpha=SMALL["alpha"], weights="none", epochs=2, batch_size=16, seed=3)
    streamed_dir = str(tmp_path / "streamed")
    streamed = training.train_head(sample_dataset, streamed_dir, chosen)

    keras = model_lib.keras()
    keras.utils.set_random_seed(3)
    backbone = model_lib.build_backbone("MobileNetV2", SMALL["alpha"], SMALL["image_size"], "none")
    train_x, train_y = training.extract_features(backbone, sample_dataset, "train", 16)
    val_x, val_y = training.extract_features(backbone, sample_dataset, "val", 16)
    model = model_lib.build_model(backbone, 2, chosen.head.dropout, train_x.mean(axis=0), train_x.var(axis=0))
    head = model_lib.head(model)
    model_lib.compile_model(head, chosen.training.learning_rate, 2, jit_compile=False, steps_per_execution=1)
    in_memory = head.fit(train_x, train_y, validation_data=(val_x, val_y), epochs=2, batch_size=16, shuffle=True,
                         verbose=0)

    trained = model_lib.load_keras(streamed_dir)
    for ours, theirs in zip(trained.get_weights(), model.get_weights(), strict=True):
        assert np.array_equal(ours, theirs)
    assert streamed["loss"] == [pytest.approx(loss, rel=0, abs=0) for loss in in_memory.history["loss"]]


def test_the_drift_reference_traces_its_features_function_once(sample_dataset, head_model, tmp_path, monkeypatch):
    """Issue 29.5: batches hold different numbers of sampled photos; a trace per number (10-20 MB
    each) made fine-tuning's peak grow with the data set."""
    import tensorflow as tf

    from tlp.components.lib import drift, training
    from tlp.components.lib import model as model_lib

    monkeypatch.setattr(drift, "MAX_REFERENCE", 20)  # of 59 training photos: 0 to 8 a batch of 8
    made = []
    original = tf.function

    def recording(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tf, "function", recording)
    count = training.write_drift_reference(model_lib.load_keras(head_model[0]), sample_dataset, str(tmp_path), 8, 3)
    assert count == 20
    assert [function.experimental_get_tracing_count() for function in made] == [1]
