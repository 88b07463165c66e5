"""Model builders: layer counts, trainable counts, shapes, the serving signature."""

import numpy as np
import pytest

from tlp.components.lib import model as model_lib
from tlp.components.lib.specs import BASES, ConfigError


@pytest.fixture(scope="module")
def backbone():
    return model_lib.build_backbone("MobileNetV2", 0.35, 64, "none")


def test_base_has_154_layers_and_pooled_width(backbone):
    base = backbone.get_layer(model_lib.BASE_LAYER_NAME)
    assert len(base.layers) == 154  # TF 2.21 (the 2020 tutorial printed 155)
    assert backbone.output_shape == (None, 1280)
    assert not base.trainable


def test_binary_model_frozen_base_trains_only_the_head(backbone):
    model = model_lib.build_model(backbone, 2, 0.2, np.zeros(1280), np.ones(1280))
    assert model.output_shape == (None, 1)
    # Only the Dense kernel and bias train while the base is frozen (tutorial: 2 variables).
    assert [v.name.split("/")[-1] for v in model.trainable_variables] == ["kernel:0", "bias:0"]
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3)).astype("float32")
    assert model(images, training=False).shape == (3, 1)


def test_multiclass_head_has_one_logit_per_class(backbone):
    model = model_lib.build_model(backbone, 5, 0.0, np.zeros(1280), np.ones(1280))
    assert model.output_shape == (None, 5)


def test_head_shares_weights_with_the_model(backbone):
    model = model_lib.build_model(backbone, 2, 0.0, np.zeros(1280), np.ones(1280))
    head = model_lib.head(model)
    dense = model.get_layer("logits")
    dense.kernel.assign(np.full(dense.kernel.shape, 0.5, "float32"))
    assert np.allclose(head.get_layer("logits").kernel.numpy(), 0.5)


def test_feature_standardization_handles_tiny_random_weight_features(backbone):
    mean, variance = np.full(1280, 2e-12), np.full(1280, 1e-26)  # what random weights give
    model = model_lib.build_model(backbone, 2, 0.0, mean, variance)
    standardize = model.get_layer("feature_standardization")
    out = standardize(np.full((1, 1280), 3e-12, "float32")).numpy()
    assert np.allclose(out, 10.0, rtol=1e-3)  # (3e-12 - 2e-12) / 1e-13


def test_unfreeze_from_layer_100_keeps_batchnorm_frozen(backbone):
    keras = model_lib.keras()
    model = model_lib.build_model(backbone, 2, 0.2, np.zeros(1280), np.ones(1280))
    model_lib.unfreeze(model, 100, 1e-5, 2)
    base = model.get_layer(model_lib.BASE_LAYER_NAME)
    assert all(not layer.trainable for layer in base.layers[:100])
    tail = base.layers[100:]
    assert all(not layer.trainable for layer in tail if isinstance(layer, keras.layers.BatchNormalization))
    assert any(layer.trainable for layer in tail if isinstance(layer, keras.layers.Conv2D))
    expected = sum(len(layer.trainable_weights) for layer in tail) + 2
    assert len(model.trainable_variables) == expected
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-5)


def test_unfreeze_beyond_layer_count_is_refused(backbone):
    model = model_lib.build_model(backbone, 2, 0.2, np.zeros(1280), np.ones(1280))
    with pytest.raises(ConfigError, match="--fine-tune-at 154 is beyond the 154 layers"):
        model_lib.unfreeze(model, 154, 1e-5, 2)


def test_probabilities_shapes():
    binary = model_lib.probabilities(np.array([[0.0], [100.0]], "float32"), 2).numpy()
    assert np.allclose(binary, [[0.5, 0.5], [0.0, 1.0]], atol=1e-6)
    multi = model_lib.probabilities(np.zeros((1, 4), "float32"), 4).numpy()
    assert np.allclose(multi, 0.25)


@pytest.mark.slow  # builds every base at several widths and sizes
@pytest.mark.parametrize("base", [name for name, base in BASES.items() if base["layers"]])
def test_a_fixed_layer_count_is_the_count_keras_builds(base):
    alphas = (0.35, 0.75, 1.0, 1.4) if base == "MobileNetV2" else (0.75, 1.0) if BASES[base]["alpha"] else (1.0,)
    for alpha in alphas:
        for size in (32, 224):
            assert len(model_lib.build_base(base, alpha, size, "none").layers) == BASES[base]["layers"], (alpha, size)


def test_a_base_without_a_fixed_layer_count_is_built_to_count_it():
    assert BASES["MobileNetV3Large"]["layers"] is None
    assert model_lib.base_layer_count("MobileNetV3Large", 1.0, 32) == len(
        model_lib.build_base("MobileNetV3Large", 1.0, 32, "none").layers)
