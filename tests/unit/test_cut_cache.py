"""Fine-tuning from cached activations at the cut (components/lib/cut_cache.py)."""

import os
import tempfile

import numpy as np
import pytest

from tests.conftest import SMALL, settings
from tests.support import assert_same_history, weights
from tlp.components.lib import cut_cache, training
from tlp.components.lib import model as model_lib
from tlp.components.lib.dataprep import records as prepared
from tlp.components.lib.specs import ServiceError

# Measured: the cut-cached and the plain path end with bit-identical weights on one device and on
# two logical CPUs (max difference 0.0); this leaves room for float summation order only.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def full_model():
    """A small full model (MobileNetV2 alpha 0.35, 64 px, random weights), unfrozen from 100."""
    keras = model_lib.keras()
    keras.utils.set_random_seed(3)
    backbone = model_lib.build_backbone("MobileNetV2", SMALL["alpha"], SMALL["image_size"], "none")
    width = backbone.output.shape[-1]
    model = model_lib.build_model(backbone, 2, 0.0, np.zeros(width), np.ones(width))
    model_lib.unfreeze(model, 100, 1e-5, 2)
    return model


def _pixels(count=6, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, SMALL["image_size"], SMALL["image_size"], 3))


def test_the_tensors_crossing_the_cut_include_the_residual_branch(full_model):
    base = full_model.get_layer(model_lib.BASE_LAYER_NAME)
    names = [t._keras_history.layer.name for t in cut_cache.cut_tensors(base, 100)]
    assert names == ["block_11_expand_BN", "block_10_project_BN"]  # the expansion input and the skip branch
    assert base.layers[100].name == "block_11_expand_relu"
    assert [t._keras_history.layer.name for t in cut_cache.cut_tensors(base, 0)] == [base.layers[0].name]


@pytest.mark.parametrize("fine_tune_at", [0, 1, 30, 100, 153])
def test_lower_then_upper_computes_the_full_model(full_model, fine_tune_at):
    model_lib.unfreeze(full_model, fine_tune_at, 1e-5, 2)
    cut = cut_cache.split_at_cut(full_model, fine_tune_at)
    pixels = _pixels()
    expected = full_model(pixels, training=False).numpy()
    crossing = cut.lower(pixels)
    assert [tuple(t.shape[1:]) for t in crossing] == cut.shapes
    got = cut.upper(crossing if len(crossing) > 1 else crossing[0], training=False).numpy()
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-6)
    trained = {id(w) for w in cut.upper.trainable_weights}  # the same variables as the full model's
    assert trained and trained <= {id(w) for w in full_model.trainable_weights}


def test_trainable_weights_below_the_cut_stop_the_cut(full_model):
    model_lib.unfreeze(full_model, 100, 1e-5, 2)
    with pytest.raises(cut_cache.CutNotApplicable, match="below the cut are trainable"):
        cut_cache.split_at_cut(full_model, 120)


def test_a_model_with_augmentation_before_the_base_is_not_cut():
    keras = model_lib.keras()
    base = model_lib.build_base("MobileNetV2", SMALL["alpha"], SMALL["image_size"], "none")
    inputs = keras.Input((SMALL["image_size"], SMALL["image_size"], 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = base(x, training=False)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(cut_cache.CutNotApplicable, match="augmentation"):
        cut_cache.split_at_cut(model, 100)


def test_cache_keeps_rows_in_memory_up_to_the_budget_and_spills_the_rest(tmp_path):
    shapes = [(2, 3), (4,)]
    rng = np.random.default_rng(1)
    first, second = rng.normal(size=(10, 2, 3)).astype(np.float32), rng.normal(size=(10, 4)).astype(np.float32)
    labels = np.arange(10) % 2
    spill = str(tmp_path / "train.f32")
    cache = cut_cache.ActivationCache(shapes, capacity=10, memory_rows=3, spill_path=spill)
    for start in (0, 4, 8):  # batches of 4, 4, 2
        cache.add([first[start : start + 4], second[start : start + 4]], labels[start : start + 4])
    with pytest.raises(ServiceError, match="before it was completely built"):
        cache.gather([0])
    cache.finish()
    assert cache.count == 10 and cache.spilled_rows == 7
    assert os.path.getsize(spill) == 7 * cache.row_bytes  # float32 rows, the in-memory ones not written
    order = np.array([9, 0, 4, 2, 3, 7, 7, 1])
    got_first, got_second, got_labels = cache.gather(order)
    assert np.array_equal(got_first, first[order]) and np.array_equal(got_second, second[order])
    assert np.array_equal(got_labels, labels[order])
    cache.close()
    assert not os.path.exists(spill)


def test_a_cache_whose_build_fails_is_deleted(sample_dataset, tmp_path, monkeypatch):
    import tensorflow as tf

    added = []
    original = cut_cache.ActivationCache.add

    def add(self, tensors, labels):  # the first batch lands in the spill file, the second never comes
        if added:
            raise RuntimeError("preempted")
        added.append(len(labels))
        original(self, tensors, labels)

    monkeypatch.setattr(cut_cache.ActivationCache, "add", add)
    spill = str(tmp_path / "train.f32")
    with pytest.raises(RuntimeError, match="preempted"):
        cut_cache.build_cache(lambda batch: [tf.zeros((tf.shape(batch)[0], 4))], sample_dataset, "train", 16,
                              [(4,)], memory_bytes=0, spill_path=spill)
    assert added == [16] and not os.path.exists(spill)


def test_training_stream_is_the_record_stream_batch_for_batch(sample_dataset):
    """Same shuffle, repeat and batches as prepared.read_split, epoch after epoch."""
    records = prepared.read_split(sample_dataset, "train", with_source_ids=True)
    ids = [source_id.decode() for _, _, source_id in records.as_numpy_iterator()]
    cache = cut_cache.ActivationCache([(1,)], len(ids), len(ids), "unused")
    cache.add([np.arange(len(ids), dtype=np.float32)[:, None]], np.zeros(len(ids)))
    cache.finish()

    def ours(dataset, batches):
        return [[ids[int(i)] for i in x[:, 0]] for x, _ in dataset.take(batches).as_numpy_iterator()]

    def plain(dataset, batches):
        return [[s.decode() for s in b[2]] for b in dataset.take(batches).as_numpy_iterator()]

    # One iterator per epoch (model.fit without steps_per_epoch): reshuffled every epoch.
    ours_epochs = cut_cache.cache_dataset(cache, 12, shuffle_seed=5)
    plain_epochs = prepared.read_split(sample_dataset, "train", 12, shuffle_seed=5, with_source_ids=True)
    first = ours(ours_epochs, 99)
    assert first == plain(plain_epochs, 99) and len(first) == -(-len(ids) // 12)  # the last batch may be short
    second = ours(ours_epochs, 99)
    assert second == plain(plain_epochs, 99) and second != first
    # Several replicas: the gathered rows are batched again (so tf.distribute finds the batch size).
    rebatched = ours(cut_cache.cache_dataset(cache, 12, shuffle_seed=5, distributed=True), 99)
    replayed = prepared.read_split(sample_dataset, "train", 12, shuffle_seed=5, with_source_ids=True)
    assert rebatched == plain(replayed, 99)
    # One endless iterator (steps_per_execution > 1): batches run across epoch boundaries.
    endless = ours(cut_cache.cache_dataset(cache, 12, shuffle_seed=5, repeat=True), 16)
    assert endless == plain(prepared.read_split(sample_dataset, "train", 12, shuffle_seed=5, with_source_ids=True,
                                              repeat=True), 16)


@pytest.fixture(scope="module")
def head_without_dropout(sample_dataset, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("head0") / "model")
    training.train_head(sample_dataset, directory,
                        settings(alpha=SMALL["alpha"], weights="none", epochs=1, batch_size=16, dropout=0.0))
    return directory



@pytest.fixture
def keras_export_only(monkeypatch):
    """fine_tune saves the Keras model only (the SavedModel export is not under test here)."""
    monkeypatch.setattr(model_lib, "export_servable",
                        lambda model, export_dir, class_names, image_size, info:
                        model_lib.save_keras(model, export_dir, info))


@pytest.mark.slow
def test_fine_tuning_from_the_cut_equals_fine_tuning_on_images(sample_dataset, head_without_dropout, tmp_path,
                                                               monkeypatch, capsys, keras_export_only):
    """Half the cached rows spilled to disk; the result is still plain fine-tuning's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where spill files go by default
    row_bytes = 4 * (4 * 4 * 192 + 4 * 4 * 32)
    monkeypatch.setattr(cut_cache, "DEFAULT_BUDGET_BYTES", 32 * row_bytes)
    runs = {}
    for name, cut in (("cut", True), ("plain", False)):
        history, _replicas = training.fine_tune(
            sample_dataset, head_without_dropout, str(tmp_path / name),
            settings(fine_tune_at=100, fine_tune_epochs=2, batch_size=16, seed=11, no_cut_cache=not cut),
        )
        runs[name] = (history, weights(str(tmp_path / name)))
    output = capsys.readouterr().out
    counts = prepared.read_metadata(sample_dataset)["num_examples"]  # about 64 and 8 (the split is by content)
    assert f"train {counts['train']} images (32 in memory, {counts['train'] - 32} spilled to disk" in output
    assert f"val {counts['val']} images (0 in memory, {counts['val']} spilled to disk" in output
    assert_same_history(runs["cut"][0], runs["plain"][0])  # the same losses and accuracies, epoch by epoch
    before = weights(head_without_dropout)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(before, runs["plain"][1], strict=True))
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(runs["cut"][1], runs["plain"][1], strict=True))
    assert moved > 50 * TOLERANCE and difference < TOLERANCE
    assert not [name for name in os.listdir(tmp_path) if name.startswith(cut_cache.SPILL_PREFIX)]


@pytest.mark.slow  # trains end to end: make test runs it, make test-fast does not
def test_several_steps_per_execution_from_the_cut_equal_plain(sample_dataset, head_without_dropout, tmp_path,
                                                              keras_export_only):
    """With steps_per_execution > 1 the streams repeat and batches run across epoch ends."""
    histories = {}
    for name, cut in (("cut", True), ("plain", False)):
        histories[name], _ = training.fine_tune(
            sample_dataset, head_without_dropout, str(tmp_path / name),
            settings(fine_tune_at=100, fine_tune_epochs=2, batch_size=24, seed=11, steps_per_execution=2,
                     no_cut_cache=not cut),
        )
    assert_same_history(histories["cut"], histories["plain"])


def test_spill_files_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / f"{cut_cache.SPILL_PREFIX}999999999-x"  # no such process
    alive = tmp_path / f"{cut_cache.SPILL_PREFIX}{os.getpid()}-y"
    for directory in (dead, alive):
        directory.mkdir()
        (directory / "train.f32").write_bytes(b"half")
    mine = cut_cache.spill_directory(str(tmp_path))
    assert not dead.exists() and alive.exists() and os.path.isdir(mine)


def test_fine_tuning_keeps_no_cached_rows_in_the_process_by_default(sample_dataset, head_model, tmp_path, monkeypatch,
                                                                    keras_export_only):
    """Issue 29.5: fine-tuning's memory must not grow with the photos, so by default every cached
    row goes to the spill file (read back with pread; the page cache holds it, not the process)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where spill files go by default
    built = []
    original = cut_cache.build_cache

    def recording(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(cut_cache, "build_cache", recording)
    training.fine_tune(sample_dataset, head_model[0], str(tmp_path / "model"),
                       settings(fine_tune_at=100, fine_tune_epochs=1, batch_size=16))
    assert [cache.count > 0 for cache in built] == [True, True]  # train and validation were cached
    assert [cache.memory_rows for cache in built] == [0, 0]
    assert [cache.spilled_rows for cache in built] == [cache.count for cache in built]
