"""``tlp drift MODEL PHOTOS...``: do these photos still look like the photos the model was trained on?

The photos' pooled features come from the model's own SavedModel (its ``serving_with_features``
signature: the network that was registered); ``drift.two_sample_test`` compares them with the
reference stored in the model directory. Exit code 4 when they drifted, so a scheduler can act."""

from __future__ import annotations

import json

import numpy as np

from tlp.components.lib import drift
from tlp.components.lib import model as model_lib
from tlp.components.lib.dataprep.encode import dangling_link, prepare_bytes
from tlp.components.lib.dataprep.sources import IMAGE_EXTENSIONS, read_bytes, read_failure
from tlp.components.lib.specs import ConfigError
from tlp.pipelines.predict import resolve_model

DRIFTED_EXIT = 4
SHOWN = 10


def photo_paths(sources: list[str]) -> list[str]:
    """Image files named or under named folders (local or gs://), sorted within each folder."""
    import tensorflow as tf

    found: list[str] = []
    for source in sources:
        if source.startswith("gs://"):  # through Cloud Storage's client, as data prep reads (retries, errors)
            found.extend(_cloud_photos(source))
        elif tf.io.gfile.isdir(source):
            for directory, _subdirs, names in sorted(tf.io.gfile.walk(source)):
                found.extend(f"{directory.rstrip('/')}/{name}" for name in sorted(names)
                             if name.lower().endswith(IMAGE_EXTENSIONS))
        elif tf.io.gfile.exists(source):
            found.append(source)
        else:
            raise ConfigError(f"{source!r} is neither an image file nor a folder; give photos or folders of them.")
    if not found:
        raise ConfigError(f"no image files under {', '.join(sources)}; give photos or folders of them.")
    return found


def _cloud_photos(source: str) -> list[str]:
    """The object ``source`` names, or the image files under it as a folder, sorted."""
    from apache_beam.io.filesystem import BeamIOError
    from apache_beam.io.filesystems import FileSystems

    try:
        results = FileSystems.match([source, source.rstrip("/") + "/**"])
    except BeamIOError as error:  # one per pattern: the first says why (refused, unavailable, ...)
        raise read_failure(source, next(iter(error.exception_details.values()))) from error
    paths = sorted({entry.path for result in results for entry in result.metadata_list})
    return [path for path in paths if path == source or path.lower().endswith(IMAGE_EXTENSIONS)]


def features_of(model_dir: str, paths: list[str],
                batch_size: int = 32) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """(features [N, D], the paths scored, the unreadable ones, the scored photos' content ids) through
    the model's features signature, each photo first prepared as data prep prepared the training
    photos (``prepare_bytes``), so that only the photos differ between the two sides, not how they
    were stored. The content id (``drift.content_id`` of the prepared photo) makes two files of one
    picture one photo for the test."""
    import tensorflow as tf

    signature = model_lib.load_servable(model_dir, model_lib.FEATURES_SIGNATURE)
    image_size = int(model_lib.read_info(model_dir)["image_size"])
    features, scored, unreadable = [], [], []
    photos: list[str] = []
    for start in range(0, len(paths), batch_size):
        batch, names = [], []
        for name in paths[start:start + batch_size]:
            if dangling_link(name):  # as in data prep and tlp predict: nothing to read, listed as unreadable
                unreadable.append(name)
                continue
            data = read_bytes(name)  # a failed read stops with why (refused: the bucket and the role to grant)
            try:
                batch.append(prepare_bytes(data, image_size))
                names.append(name)
            except MemoryError:
                raise
            except Exception:  # as in data prep: bytes that were read and do not decode are left out and listed
                unreadable.append(name)
        if batch:
            features.append(signature(image_bytes=tf.constant(batch))[model_lib.FEATURES_OUTPUT].numpy())
            scored.extend(names)
            photos.extend(drift.content_id(prepared) for prepared in batch)
    if not features:
        raise ConfigError(f"none of the {len(paths)} files could be decoded as an image; give JPEG, PNG, GIF or BMP.")
    return np.concatenate(features), scored, unreadable, photos


def score(model: str, sources: list[str], registry_uri: str, *, seed: int = 0) -> tuple[drift.DriftResult, list[str]]:
    model_dir = resolve_model(model, registry_uri)
    reference = drift.load_reference(model_dir, model)
    features, scored, unreadable, photos = features_of(model_dir, photo_paths(sources))
    return drift.two_sample_test(reference.features, features, seed=seed, ids=scored, new_photos=photos,
                                 reference_photos=reference.photos), unreadable


def report(result: drift.DriftResult, unreadable: list[str], threshold: float, as_json: bool) -> str:
    if as_json:
        return json.dumps({**result.as_dict(threshold, SHOWN), "unreadable": unreadable})
    lines = [f"tlp drift: {result.n_new} photos vs {result.n_reference} training photos of the model: AUC "
             f"{result.auc:.3f}", f"  {drift.verdict(result.auc, threshold)}", "  least like the training photos:"]
    lines += [f"    {row['score']:.3f}  {row['photo']}" for row in result.most_different(SHOWN)]
    if unreadable:
        lines.append(f"  {len(unreadable)} unreadable file(s) left out, e.g. {unreadable[0]}")
    return "\n".join(lines)


def run(model: str, sources: list[str], registry_uri: str, *, threshold: float, as_json: bool, echo=print) -> int:
    result, unreadable = score(model, sources, registry_uri)
    echo(report(result, unreadable, threshold, as_json))
    return DRIFTED_EXIT if result.drifted(threshold) else 0
