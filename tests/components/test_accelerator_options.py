"""The GPU speed-ups (mixed precision, XLA, steps per execution) are exercised on CPU: a few
steps of both training phases with each flag, then the servable model must predict."""

import math
import os

import numpy as np
import pytest

from tests.conftest import settings
from tlp.components.lib import model as model_lib
from tlp.components.lib.dataprep import records
from tlp.components.lib.specs import ConfigError
from tlp.components.lib.training import fine_tune, train_head


@pytest.fixture(scope="module")
def local_weights_file(tmp_path_factory):
    """A local .h5 weights file of the base (random weights, as offline)."""
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v2_0.35_64_no_top.h5")
    model_lib.build_base("MobileNetV2", 0.35, 64, "none").save_weights(path)
    return path


@pytest.mark.slow  # trains end to end: make test runs it, make test-fast does not
@pytest.mark.parametrize(
    "precision, xla, steps_per_execution",
    [("mixed_bfloat16", False, 1), ("mixed_float16", False, 1), ("float32", True, 1), ("float32", False, 4)],
)
def test_flag_trains_and_the_model_predicts(
    sample_dataset, local_weights_file, tmp_path, precision, xla, steps_per_execution
):
    import tensorflow as tf

    weights = local_weights_file if precision == "mixed_float16" else "none"
    chosen = settings(mixed_precision=precision, xla=xla, steps_per_execution=steps_per_execution, alpha=0.35,
                      weights=weights, epochs=1, fine_tune_epochs=1, batch_size=16)
    head_history = train_head(sample_dataset, str(tmp_path / "head"), chosen)
    tuned_history, _ = fine_tune(sample_dataset, str(tmp_path / "head"), str(tmp_path / "tuned"), chosen)
    assert all(math.isfinite(v) for v in head_history["loss"] + tuned_history["loss"])
    assert model_lib.read_info(str(tmp_path / "tuned"))["options"]["mixed_precision"] == precision
    assert model_lib.keras().mixed_precision.global_policy().name == "float32"  # restored
    serve = model_lib.load_servable(str(tmp_path / "tuned"))
    batch, _ = next(iter(records.read_split(sample_dataset, "test", 3)))
    result = serve(image_bytes=tf.constant([tf.io.encode_jpeg(i).numpy() for i in batch]))
    probabilities = result["probabilities"].numpy()
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 2)
    assert np.all(np.isfinite(probabilities)) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert os.path.isfile(tmp_path / "tuned" / "saved_model.pb")


def test_mixed_float16_with_random_weights_is_refused(sample_dataset, tmp_path):
    with pytest.raises(ConfigError, match="would underflow the random-weight features"):
        train_head(sample_dataset, str(tmp_path / "m"),
                   settings(check=False, alpha=0.35, weights="none", epochs=1, mixed_precision="mixed_float16"))


def test_fine_tuning_needs_the_precision_of_phase_one(sample_dataset, head_model, tmp_path):
    with pytest.raises(ConfigError, match="differs from the float32 the feature-extraction phase used"):
        fine_tune(sample_dataset, head_model[0], str(tmp_path / "t"),
                  settings(fine_tune_epochs=1, mixed_precision="mixed_bfloat16"))
