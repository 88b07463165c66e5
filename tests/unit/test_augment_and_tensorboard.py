"""Augmentation (training only, never in the exported model) and the TensorBoard logs of both
training phases, on a small model trained once for the module."""

import os

import numpy as np
import pytest

from tests.conftest import SMALL, settings
from tlp.components.lib.augment import canonical, parse_augment
from tlp.components.lib.specs import ConfigError

HEAD_EPOCHS, TUNE_EPOCHS = 3, 2


def test_spec_forms_and_the_tutorial_shorthand():
    assert canonical("tutorial") == "flip,rotate:0.2"
    assert canonical("") == canonical("none") == ""
    assert parse_augment("flip, zoom:0.1,contrast:0.1") == (("flip", None), ("zoom", 0.1), ("contrast", 0.1))
    assert settings(augment="tutorial").training.augment == "flip,rotate:0.2"


@pytest.mark.parametrize("spec, words", [
    ("spin", "'spin' is not an augmentation"),
    ("rotate", "rotate needs a factor"),
    ("rotate:2", "must be above 0 and at most 1"),
    ("flip:0.5", "flip takes no factor"),
    ("flip,flip", "names flip twice"),
])
def test_bad_specs_are_refused_with_the_fix(spec, words):
    with pytest.raises(ConfigError, match=words):
        settings(augment=spec)


def test_augmentation_changes_training_batches_each_epoch_and_keeps_the_range(sample_dataset):
    from tlp.components.lib import augment
    from tlp.components.lib.dataprep import records

    stream = augment.apply(records.read_split(sample_dataset, "train", 8), "flip,rotate:0.2,contrast:0.1", seed=1)
    first, second = (next(iter(stream))[0].numpy() for _ in range(2))
    original = next(iter(records.read_split(sample_dataset, "train", 8)))[0].numpy()
    assert first.shape == original.shape and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 255.0
    assert not np.allclose(first, original) and not np.allclose(first, second)
    assert augment.apply("unchanged", "", seed=1) == "unchanged"


@pytest.fixture(scope="module")
def augmented_run(sample_dataset, tmp_path_factory):
    """Both phases with --augment tutorial, each writing TensorBoard logs."""
    from tlp.components.lib.training import fine_tune, train_head

    root = tmp_path_factory.mktemp("augmented")
    chosen = settings(alpha=SMALL["alpha"], weights="none", epochs=HEAD_EPOCHS, batch_size=16, augment="tutorial",
                      fine_tune_epochs=TUNE_EPOCHS, fine_tune_at=100)
    head_dir, tuned_dir = str(root / "head"), str(root / "tuned")
    head_history = train_head(sample_dataset, head_dir, chosen, backup_dir=str(root / "backup-head"),
                              tensorboard_dir=str(root / "tb-head"))
    tune_history, _ = fine_tune(sample_dataset, head_dir, tuned_dir, chosen, backup_dir=str(root / "backup-tune"),
                                tensorboard_dir=str(root / "tb-tune"))
    return root, head_history, tune_history


@pytest.mark.slow  # trains end to end: make test runs it, make test-fast does not
def test_augmented_phases_train_and_record_the_spec(augmented_run):
    root, head_history, tune_history = augmented_run
    assert head_history["epoch"] == [1, 2, 3] and tune_history["epoch"] == [4, 5]
    from tlp.components.lib import model as model_lib

    assert model_lib.read_info(str(root / "tuned"))["options"]["augment"] == "flip,rotate:0.2"


@pytest.mark.slow  # trains end to end: make test runs it, make test-fast does not
def test_exported_model_carries_no_augmentation(augmented_run, sample_dataset):
    """Same images in, same probabilities out, call after call: nothing random at inference."""
    import tensorflow as tf

    from tlp.components.lib import model as model_lib
    from tlp.components.lib.dataprep import records

    root = augmented_run[0]
    keras_model = model_lib.load_keras(str(root / "tuned"))
    layer_types = {type(layer).__name__ for layer in keras_model.layers}
    assert not any(name.startswith("Random") for name in layer_types), layer_types
    batch = next(iter(records.read_split(sample_dataset, "test", 6)))[0]
    encoded = tf.stack([tf.io.encode_png(image) for image in batch])
    serve = model_lib.load_servable(str(root / "tuned"))
    calls = [serve(image_bytes=encoded)["probabilities"].numpy() for _ in range(3)]
    assert np.array_equal(calls[0], calls[1]) and np.array_equal(calls[1], calls[2])


def _epoch_scalars(log_dir):
    """{(run, tag): {step: value}} from the TensorBoard event files under log_dir."""
    import tensorflow as tf

    found = {}
    for directory, _subdirs, names in os.walk(log_dir):
        for name in names:
            if "tfevents" not in name:
                continue
            run = os.path.relpath(directory, log_dir)
            for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
                for value in event.summary.value:
                    if value.tag.startswith("epoch_"):  # tf.summary v2 keeps scalars as tensors
                        found.setdefault((run, value.tag), {})[event.step] = float(tf.make_ndarray(value.tensor))
    return found


@pytest.mark.slow  # trains end to end: make test runs it, make test-fast does not
def test_both_phases_write_tensorboard_epochs_continuing(augmented_run):
    root, head_history, tune_history = augmented_run
    head, tune = _epoch_scalars(str(root / "tb-head")), _epoch_scalars(str(root / "tb-tune"))
    for run in ("train", "validation"):
        assert sorted(head[(run, "epoch_loss")]) == [0, 1, 2]
        assert sorted(head[(run, "epoch_accuracy")]) == [0, 1, 2]
        assert sorted(tune[(run, "epoch_loss")]) == [3, 4]  # fine-tuning's epochs continue phase 1's
    assert [head[("train", "epoch_loss")][step] for step in range(3)] == pytest.approx(head_history["loss"])
    assert [tune[("validation", "epoch_accuracy")][step] for step in (3, 4)] == pytest.approx(
        tune_history["val_accuracy"])


def test_vertex_ai_tensorboard_dir_wins_when_vertex_sets_it(monkeypatch):
    from tlp.components.lib.training import tensorboard_dir

    monkeypatch.delenv("AIP_TENSORBOARD_LOG_DIR", raising=False)
    assert tensorboard_dir("/run/feature-extraction/tensorboard") == "/run/feature-extraction/tensorboard"
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", "gs://bucket/run/feature-extraction/logs/")
    assert tensorboard_dir("/run/feature-extraction/tensorboard") == "gs://bucket/run/feature-extraction/logs/"
