"""The transfer-learning model, as in the tutorial: a frozen ImageNet base, a small head.

Training code uses tf-keras (``import tf_keras``), not Keras 3: Keras 3 fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585).

Model layout (functional)::

    uint8/float image [0, 255] -> pixel scaling -> base (called with training=False)
      -> GlobalAveragePooling2D -> feature standardization -> Dropout -> Dense(1 or C) logits

The feature standardization is a fixed per-feature affine map built from the mean and
variance of the training images' pooled features. With ImageNet weights it is a harmless affine map;
with random weights (offline runs) the pooled features are tiny (~1e-12) and it is what lets
the head learn at the tutorial's learning rate.
"""

from __future__ import annotations

import contextlib
import json
import os

from tlp.components.lib import specs
from tlp.components.lib.dataprep.encode import resize
from tlp.components.lib.specs import BASES, check_fine_tune_at

BASE_LAYER_NAME = "base"


def keras():
    import tf_keras

    return tf_keras


def build_base(base: str, alpha: float, image_size: int, weights: str):
    """The Keras application without its top. ``weights``: imagenet | none | path to .h5."""
    keras_ = keras()
    constructor = getattr(keras_.applications, base)
    kwargs = {"input_shape": (image_size, image_size, 3), "include_top": False}
    if BASES[base]["alpha"]:
        kwargs["alpha"] = alpha
    if base.startswith("MobileNetV3"):
        kwargs["include_preprocessing"] = True
    load_from_file = weights not in ("imagenet", "none")
    kwargs["weights"] = None if weights == "none" or load_from_file else "imagenet"
    model = constructor(**kwargs)
    if load_from_file:
        model.load_weights(weights)
    model._name = BASE_LAYER_NAME  # a stable name to find it by, whatever the base
    return model


def base_layer_count(base: str, alpha: float, image_size: int) -> int:
    """Layer count of the base (what ``fine_tune_at`` indexes): from ``BASES`` when it is fixed,
    else by building the base with random weights."""
    return BASES[base]["layers"] or len(build_base(base, alpha, image_size, "none").layers)


def build_backbone(base: str, alpha: float, image_size: int, weights: str):
    """Image [0, 255] -> pooled features of the frozen base, in inference mode."""
    keras_ = keras()
    base_model = build_base(base, alpha, image_size, weights)
    base_model.trainable = False
    inputs = keras_.Input(shape=(image_size, image_size, 3), name="image")
    if BASES[base]["scaling"] == "minus_one_to_one":
        x = keras_.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="pixel_scaling")(inputs)
    else:
        x = keras_.layers.Rescaling(1.0, name="pixel_scaling")(inputs)
    # training=False keeps BatchNorm in inference mode even once the base is unfrozen.
    x = base_model(x, training=False)
    pooled = keras_.layers.GlobalAveragePooling2D(name="pooled_features")(x)
    return keras_.Model(inputs, pooled, name="backbone")


def build_model(backbone, num_classes: int, dropout: float, feature_mean, feature_variance):
    """The tutorial's classifier on top of ``backbone``: Dropout, then Dense logits
    (1 unit for two classes, else one per class), after the feature standardization."""
    keras_ = keras()
    # A fixed per-feature affine map (x - mean) / std. Rescaling rather than Normalization:
    # Normalization floors std at 1e-7, which would erase random-weight features (~1e-12).
    std = [max(float(v), 0.0) ** 0.5 or 1.0 for v in feature_variance]
    x = keras_.layers.Rescaling(
        scale=[1.0 / s for s in std],
        offset=[-float(m) / s for m, s in zip(feature_mean, std, strict=True)],
        name="feature_standardization",
        dtype="float32",  # scales of 1e12 overflow float16
    )(backbone.output)
    x = keras_.layers.Dropout(dropout, name="head_dropout")(x)
    units = 1 if num_classes == 2 else num_classes
    # float32 logits even under mixed precision: a stable softmax/sigmoid and loss.
    outputs = keras_.layers.Dense(units, name="logits", dtype="float32")(x)
    return keras_.Model(backbone.input, outputs, name="transfer_classifier")


def head(model):
    """Pooled features -> logits, sharing its layers (and weights) with ``model``."""
    keras_ = keras()
    width = model.get_layer("pooled_features").output.shape[-1]
    features = keras_.Input(shape=(width,), name="pooled_features")
    x = model.get_layer("feature_standardization")(features)
    x = model.get_layer("head_dropout")(x)
    return keras_.Model(features, model.get_layer("logits")(x), name="head")


@contextlib.contextmanager
def precision_policy(precision: str = "float32"):
    """Keras mixed-precision policy for the layers built or loaded inside (restored after)."""
    keras_ = keras()
    previous = keras_.mixed_precision.global_policy()
    keras_.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras_.mixed_precision.set_global_policy(previous)


def compile_model(
    model, learning_rate: float, num_classes: int, *, jit_compile: bool = False, steps_per_execution: int = 1
) -> None:
    """RMSprop as in the tutorial; loss and accuracy on logits. ``jit_compile`` turns on XLA;
    ``steps_per_execution`` > 1 runs several batches per call (fewer host round trips on GPUs).
    Under a mixed_float16 policy tf-keras wraps the optimizer in a LossScaleOptimizer itself."""
    keras_ = keras()
    if num_classes == 2:
        loss = keras_.losses.BinaryCrossentropy(from_logits=True)
        accuracy = keras_.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")
    else:
        loss = keras_.losses.SparseCategoricalCrossentropy(from_logits=True)
        accuracy = keras_.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer=keras_.optimizers.RMSprop(learning_rate=learning_rate),
        loss=loss,
        metrics=[accuracy],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )


def unfreeze(model, fine_tune_at: int, learning_rate: float, num_classes: int, **compile_options) -> int:
    """Unfreezes the base from layer ``fine_tune_at`` on and recompiles.

    BatchNorm layers stay frozen and in inference mode (their statistics would be wrecked by
    small batches). Returns the number of trainable weight tensors.
    """
    keras_ = keras()
    base_model = model.get_layer(BASE_LAYER_NAME)
    check_fine_tune_at(fine_tune_at, len(base_model.layers), base_model.name)
    base_model.trainable = True
    for index, layer in enumerate(base_model.layers):
        frozen = index < fine_tune_at or isinstance(layer, keras_.layers.BatchNormalization)
        layer.trainable = not frozen
    compile_model(model, learning_rate, num_classes, **compile_options)
    return len(model.trainable_variables)


def probabilities(logits, num_classes: int):
    """Logits -> per-class probabilities, shape [N, C] for both the binary and softmax heads."""
    import tensorflow as tf

    if num_classes == 2:
        positive = tf.sigmoid(logits)
        return tf.concat([1.0 - positive, positive], axis=-1)
    return tf.nn.softmax(logits, axis=-1)


# --- saving ---------------------------------------------------------------------------------

KERAS_FILE = "model.keras"
# The second signature of the same SavedModel: serving_default's outputs plus the pooled features
# (what drift is measured on), from one forward pass. serving_default itself is unchanged, so
# Vertex AI's prebuilt containers and older clients see what they always saw.
FEATURES_SIGNATURE = "serving_with_features"
FEATURES_OUTPUT = "pooled_features"
INFO_FILE = "model_info.json"


def save_keras(model, directory: str, info: dict) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(directory)
    model.save(os.path.join(directory, KERAS_FILE))
    with tf.io.gfile.GFile(os.path.join(directory, INFO_FILE), "w") as handle:
        json.dump(info, handle, indent=2)


def load_keras(directory: str):
    """Loads a model saved by ``save_keras`` (or a servable export, which carries one)."""
    import tensorflow as tf

    path = os.path.join(directory, KERAS_FILE)
    if not tf.io.gfile.exists(path):
        raise specs.NotFound(
            f"{directory} holds no {KERAS_FILE}; pass a Model output of the feature-extraction "
            "or fine-tuning component."
        )
    return keras().models.load_model(path, compile=False)


def read_info(directory: str) -> dict:
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(directory, INFO_FILE)) as handle:
        return json.load(handle)


def export_servable(model, export_dir: str, class_names: list[str], image_size: int, info: dict):
    """Writes a SavedModel whose serving signature takes encoded image bytes.

    Input ``image_bytes`` (the ``_bytes`` suffix makes Vertex AI's TF serving container decode
    ``{"b64": ...}``); outputs ``probabilities`` [N, C], ``label`` [N] (class name),
    ``class_index`` [N] and ``score`` [N]. A second signature, ``serving_with_features``, returns the
    same plus ``pooled_features`` [N, D] float32 from the same call (drift). The directory also holds
    the Keras model and ``model_info.json`` so evaluation and later phases can load it.
    """
    import tensorflow as tf


    num_classes = len(class_names)
    keras_ = keras()
    # One forward pass gives both: the pooled features are an intermediate of the classifier.
    both = keras_.Model(model.input, [model.output, model.get_layer("pooled_features").output])

    class Servable(tf.Module):
        def __init__(self):
            super().__init__()
            # Only the weights are tracked, not the Keras objects: tracking them saves every layer's
            # traced call functions too, which a server then restores at start-up for nothing.
            self.weights = list(both.variables)
            self.class_names = tf.constant(class_names)

        def _outputs(self, image_bytes):
            def decode(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                return resize(tf.cast(image, tf.float32), image_size)

            images = tf.map_fn(
                decode,
                image_bytes,
                fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
            )
            images = tf.round(tf.clip_by_value(images, 0.0, 255.0))
            logits, features = both(images, training=False)
            probs = probabilities(logits, num_classes)
            index = tf.argmax(probs, axis=-1, output_type=tf.int32)
            return {
                "probabilities": probs,
                "class_index": index,
                "label": tf.gather(self.class_names, index),
                "score": tf.reduce_max(probs, axis=-1),
            }, tf.cast(features, tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            return self._outputs(image_bytes)[0]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_with_features(self, image_bytes):
            outputs, features = self._outputs(image_bytes)
            return {**outputs, FEATURES_OUTPUT: features}

    servable = Servable()
    tf.saved_model.save(servable, export_dir, signatures={
        "serving_default": servable.serve, FEATURES_SIGNATURE: servable.serve_with_features,
    })
    save_keras(model, export_dir, info)


def load_servable(model_dir: str, signature: str = "serving_default"):
    """The serving signature of an exported model: call it with ``image_bytes=tf.constant([...])``.
    ``signature=FEATURES_SIGNATURE``: the same outputs plus ``pooled_features`` [N, D]."""
    import tensorflow as tf

    signatures = tf.saved_model.load(model_dir).signatures
    if signature not in signatures:
        raise specs.NotFound(
            f"the model at {model_dir} has no {signature!r} signature (exported before tlp added it); retrain it "
            "(tlp run) to get a version that has one."
        )
    return signatures[signature]
