"""Data augmentation of the training images, as in the current TensorFlow tutorial (RandomFlip,
RandomRotation), from a small spec: ``flip``, ``rotate:F``, ``zoom:F``, ``contrast:F``, joined by
commas; ``tutorial`` is ``flip,rotate:0.2``; empty or ``none`` is no augmentation.

It is applied to the training stream only (``apply``), never inside the model, so the exported
model carries no augmentation at inference and evaluation sees the images as they are. The cost:
the frozen base sees a different image every epoch, so feature extraction can no longer run it
once per image and train the head on cached features; with augmentation it runs the base every
epoch, as the tutorial does.
"""

from __future__ import annotations

from tlp.components.lib.specs import ConfigError

TUTORIAL = "flip,rotate:0.2"
# name -> what its factor means (None: it takes no factor)
KINDS = {
    "flip": None,
    "rotate": "a fraction of a full turn, e.g. rotate:0.2 (up to +-72 degrees)",
    "zoom": "a fraction of the size, e.g. zoom:0.1 (zoom in or out by up to 10%)",
    "contrast": "a fraction, e.g. contrast:0.1 (contrast scaled by 0.9 to 1.1)",
}
_FORMS = "flip, rotate:F, zoom:F, contrast:F (comma-separated), tutorial (= flip,rotate:0.2) or none"


def parse_augment(spec: str) -> tuple[tuple[str, float | None], ...]:
    """``"flip,rotate:0.2"`` -> ``(("flip", None), ("rotate", 0.2))``; ``""``/``none`` -> ``()``."""
    text = (spec or "").strip().lower()
    if text in ("", "none"):
        return ()
    if text == "tutorial":
        text = TUTORIAL
    chosen: dict[str, float | None] = {}
    for item in (part.strip() for part in text.split(",")):
        name, sep, factor_text = item.partition(":")
        if name not in KINDS:
            raise ConfigError(f"--augment {spec!r}: {item!r} is not an augmentation; use {_FORMS}.")
        if name in chosen:
            raise ConfigError(f"--augment {spec!r} names {name} twice; give each augmentation once.")
        if KINDS[name] is None:
            if sep:
                raise ConfigError(f"--augment {spec!r}: {name} takes no factor; write just {name}.")
            chosen[name] = None
            continue
        try:
            factor = float(factor_text)
        except ValueError:
            raise ConfigError(
                f"--augment {spec!r}: {name} needs a factor between 0 and 1, {KINDS[name]}."
            ) from None
        if not 0.0 < factor <= 1.0:
            raise ConfigError(f"--augment {spec!r}: {name}:{factor_text} must be above 0 and at most 1, {KINDS[name]}.")
        chosen[name] = factor
    return tuple(chosen.items())


def canonical(spec: str) -> str:
    """The spec as it is recorded and shown: ``tutorial`` -> ``flip,rotate:0.2``, none -> ``""``."""
    return ",".join(name if factor is None else f"{name}:{factor:g}" for name, factor in parse_augment(spec))


def layers(spec: str, seed: int):
    """The Keras random layers for ``spec`` (float32, whatever the mixed-precision policy)."""
    import tf_keras as keras

    made = []
    for index, (name, factor) in enumerate(parse_augment(spec)):
        layer_seed = seed + index
        if name == "flip":
            made.append(keras.layers.RandomFlip("horizontal", seed=layer_seed, dtype="float32"))
        elif name == "rotate":
            made.append(keras.layers.RandomRotation(factor, seed=layer_seed, dtype="float32"))
        elif name == "zoom":
            made.append(keras.layers.RandomZoom(factor, seed=layer_seed, dtype="float32"))
        elif name == "contrast":
            made.append(keras.layers.RandomContrast(factor, seed=layer_seed, dtype="float32"))
    return keras.Sequential(made, name="augmentation")


def apply(dataset, spec: str, seed: int):
    """A batched ``(image, label)`` training stream with ``spec`` applied to every batch (a fresh
    draw each epoch); images stay in [0, 255]. No spec: the stream unchanged."""
    if not parse_augment(spec):
        return dataset
    import tensorflow as tf

    augmentation = layers(spec, seed)

    def augmented(images, labels):
        images = augmentation(tf.cast(images, tf.float32), training=True)
        return tf.clip_by_value(images, 0.0, 255.0), labels

    return dataset.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
