"""``tlp predict``: classify image files with a model directory or a registered version."""

from __future__ import annotations

import os

from tlp.components.lib.model import load_servable
from tlp.components.lib.registry import open_registry
from tlp.components.lib.specs import ConfigError


def resolve_model(model: str, registry_uri: str) -> str:
    """A model directory as is; otherwise NAME/VERSION or NAME@ALIAS looked up in the registry."""
    if os.path.isdir(model):
        return model
    if "/" not in model and "@" not in model:
        raise ConfigError(
            f"model {model!r} is neither a directory nor NAME/VERSION or NAME@champion; "
            "pass a model directory or a registered version."
        )

    return open_registry(registry_uri).model_dir(model)


def predict_files(model: str, image_paths: list[str], registry_uri: str) -> list[dict]:
    import tensorflow as tf


    for path in image_paths:
        if not os.path.isfile(path):
            raise ConfigError(f"image {path!r} does not exist; give paths of image files.")
    serve = load_servable(resolve_model(model, registry_uri))
    rows = []
    for path in image_paths:
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            result = serve(image_bytes=tf.constant([data]))
        except tf.errors.InvalidArgumentError as error:
            reason = error.message.splitlines()[0]
            raise ConfigError(
                f"image {path!r} could not be decoded ({reason}); pass a JPEG, PNG, GIF or BMP file."
            ) from error
        rows.append({
            "image": path,
            "label": result["label"].numpy()[0].decode(),
            "probability": float(result["score"].numpy()[0]),
            "probabilities": [float(p) for p in result["probabilities"].numpy()[0]],
        })
    return rows
