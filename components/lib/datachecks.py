"""Checks of the prepared data against the data the champion was trained on, before any training
(ExampleValidator-style: from metadata only, so they cost a registry look-up).

- Fewer photos than the champion's by more than ``max_data_drop`` (a half-synced bucket must not
  quietly train a worse model) stops the run.
- A class whose share of the photos moved by more than ``max_class_shift`` stops the run. Shares
  are compared over the classes both data sets have, so adding a class does not trip it.
- Classes added or removed are reported; such a version is registered but not promoted
  automatically (see ``registration``).
- The same source fingerprint as the champion's is reported: the data did not change.

The champion's counts, class names and source fingerprint are read from its registered version
(MLflow tags, or the Vertex AI version's record)."""

from __future__ import annotations

import json
import math
import os
import typing

import numpy as np

from tlp.components.lib import drift
from tlp.components.lib import model as model_lib
from tlp.components.lib.dataprep import records
from tlp.components.lib.registration import model_name_for, split_of, split_of_data
from tlp.components.lib.registry import ModelVersion, open_registry
from tlp.components.lib.specs import ConfigError, NotFound


def _at_least(value: float) -> str:
    """The smallest option value (two decimals) that lets ``value`` through a ``> limit`` check."""
    return f"{math.ceil(value * 100 - 1e-9) / 100:g}"


def compare(metadata: dict, champion: ModelVersion | None, *, name: str, max_data_drop: float,
            max_class_shift: float) -> dict:
    """The findings for one data set (its ``metadata.json``) against the champion's record."""
    counts = {c: sum(metadata["counts"][s].get(c, 0) for s in records.SPLITS) for c in metadata["class_names"]}
    total = sum(counts.values())
    found = {"model": name, "champion": None, "photos": total, "champion_photos": None, "drop": None,
             "shares": {}, "added": [], "removed": [], "same_data": False, "class_set_changed": False,
             "findings": [], "problems": [], "passed": True}
    if champion is None:
        found["findings"].append(f"no champion of {name!r} yet: nothing to compare the data with")
        return found
    version = champion.version
    found["champion"] = version
    theirs_total = champion.total_images
    their_classes = champion.recorded("class_names", [])
    their_counts = champion.recorded("class_counts")
    found["added"] = [c for c in metadata["class_names"] if c not in their_classes]
    found["removed"] = [c for c in their_classes if c not in counts]
    found["class_set_changed"] = bool(found["added"] or found["removed"])
    source = metadata.get("source_fingerprint", "")
    same_split = split_of(champion.tags) == split_of_data(metadata.get("split", {}))
    if source and source == champion.tags.get("source_fingerprint") and same_split:
        found["same_data"] = True
        found["findings"].append(
            f"the photos and their split are the same as champion version {version} was trained on (source "
            f"fingerprint {source}); on Vertex AI or Kubeflow Pipelines such a run reuses data prep and training "
            "from the cache"
        )
    if theirs_total:
        drop = (theirs_total - total) / theirs_total
        found.update(champion_photos=theirs_total, drop=round(drop, 4))
        change = f"{abs(drop):.0%} {'fewer' if drop > 0 else 'more'}" if total != theirs_total else "as many"
        found["findings"].append(f"{total:,} photos vs {theirs_total:,} for champion version {version} ({change})")
        if drop > max_data_drop:
            gone = f"; gone: class(es) {', '.join(map(repr, found['removed']))}" if found["removed"] else ""
            found["problems"].append(
                f"{total:,} photos vs {theirs_total:,} for champion version {version} of {name!r} ({drop:.0%} fewer, "
                f"more than --max-data-drop {max_data_drop:g}{gone}); check that the source is complete (a "
                f"half-synced bucket?) or pass --max-data-drop {_at_least(drop)} to train on it anyway"
            )
    else:
        found["findings"].append(f"champion version {version} records no image counts: sizes not compared")
    if isinstance(their_counts, dict) and their_counts:
        common = [c for c in metadata["class_names"] if c in their_counts]
        ours_common, theirs_common = sum(counts[c] for c in common), sum(their_counts[c] for c in common)
        for c in common:
            now = counts[c] / ours_common if ours_common else 0.0
            before = their_counts[c] / theirs_common if theirs_common else 0.0
            found["shares"][c] = {"champion": round(before, 4), "now": round(now, 4), "shift": round(now - before, 4)}
        if found["shares"]:
            worst = max(found["shares"], key=lambda c: abs(found["shares"][c]["shift"]))
            share = found["shares"][worst]
            found["findings"].append(
                f"largest change of a class's share: {worst!r} {share['champion']:.0%} -> {share['now']:.0%}"
            )
            for c, share in found["shares"].items():
                if abs(share["shift"]) > max_class_shift:
                    found["problems"].append(
                        f"class {c!r} is {share['now']:.0%} of the photos vs {share['champion']:.0%} for champion "
                        f"version {version} (moved {abs(share['shift']):.2f}, more than --max-class-shift "
                        f"{max_class_shift:g}); pass --max-class-shift {_at_least(abs(share['shift']))} to train on "
                        "it anyway"
                    )
    else:
        found["findings"].append(
            f"champion version {version} records no per-class counts (registered before tlp recorded them): "
            "class shares not compared"
        )
    if found["class_set_changed"]:
        changes = ([f"added {', '.join(map(repr, found['added']))}"] if found["added"] else []) + (
            [f"removed {', '.join(map(repr, found['removed']))}"] if found["removed"] else [])
        found["findings"].append(
            f"classes {'; '.join(changes)} since champion version {version}: a version trained on this data is "
            "registered but not promoted automatically"
        )
    found["passed"] = not found["problems"]
    return found


def image_drift(dataset_dir: str, champion_dir: str, *, max_image_drift: float, seed: int = 0) -> dict:
    """Drift of the new training photos against the champion's reference features, with the
    champion's own network (its ``serving_with_features`` signature on the photos as data prep
    stored them, the path every drift caller takes). ``max_image_drift`` > 0 and reached: a problem
    that stops the run."""
    import tensorflow as tf

    reference = drift.load_reference(champion_dir)
    signature = model_lib.load_servable(champion_dir, model_lib.FEATURES_SIGNATURE)
    total = records.read_metadata(dataset_dir)["num_examples"]["train"]
    keep = np.zeros(total, dtype=bool)
    keep[drift.sample_indices(total, drift.MAX_NEW, seed)] = True
    features, ids, photos, batch = [], [], [], []
    for position, (stored, source_id) in enumerate(records.read_stored_images(dataset_dir, "train")):
        if keep[position]:
            batch.append(stored)  # the stored JPEG, as tlp drift and the server prepare a photo
            ids.append(source_id)
            photos.append(drift.content_id(stored))
        if len(batch) == 64 or (batch and position == total - 1):
            features.append(signature(image_bytes=tf.constant(batch))[model_lib.FEATURES_OUTPUT].numpy())
            batch = []
    new = np.concatenate(features)
    # A photo the champion trained on is not a new photo, and one on both sides is a photo the
    # classifier cannot place: such photos pull the AUC below 0.5 (the same photos again read 0.067 on
    # make run's model) and hide the new ones' drift. They are left out while enough others remain.
    known, known_photos = set(reference.ids), set(reference.photos)
    fresh = np.array([source_id not in known and photo not in known_photos
                      for source_id, photo in zip(ids, photos, strict=True)])
    overlap, note = int(len(ids) - fresh.sum()), ""
    if overlap and fresh.sum() >= drift.MIN_PHOTOS:
        new = new[fresh]
        ids = [source_id for source_id, keep_it in zip(ids, fresh, strict=True) if keep_it]
        photos = [photo for photo, keep_it in zip(photos, fresh, strict=True) if keep_it]
        note = f"; {overlap} photos the champion trained on left out"
    elif overlap:
        note = (f"; {overlap} of the {len(fresh)} photos are the champion's own training photos (the same "
                "photos on both sides)")
    result = drift.two_sample_test(reference.features, new, seed=seed, ids=ids, new_photos=photos,
                                   reference_photos=reference.photos)
    found: dict[str, typing.Any] = {
        "image_drift_auc": round(result.auc, 4), "image_drift_most_different": result.most_different(5),
        "image_drift_photos": result.n_new,
        "findings": [f"image drift of the new training photos vs the champion's: AUC {result.auc:.3f} "
                     f"({drift.verdict(result.auc, max_image_drift or drift.DEFAULT_THRESHOLD)}){note}"],
        "problems": []}
    if max_image_drift and result.auc >= max_image_drift:
        found["problems"].append(
            f"the new photos' drift AUC against the champion's training photos is {result.auc:.3f}, at or above "
            f"--max-image-drift {max_image_drift:g}; look at the photos it names (tlp drift), or pass "
            f"--max-image-drift 0 to train on them anyway"
        )
    return found


def drift_against_champion(dataset_dir: str, champion_dir: str, version: str, max_image_drift: float) -> dict:
    """``image_drift``, or a finding that says why it could not be measured: a champion registered
    before tlp kept a drift reference with each version has none."""
    try:
        return image_drift(dataset_dir, champion_dir, max_image_drift=max_image_drift)
    except NotFound:
        return {"image_drift_auc": None, "problems": [],
                "findings": [f"champion version {version} has no drift reference (registered before tlp kept one "
                             "with each version): image drift not measured; the next registered version has one"]}


def stop_sentence(found: dict) -> str:
    return "the data checks stopped the run before training: " + "; and ".join(found["problems"]) + "."


def check_against_champion(dataset_dir: str, registry_uri: str, model_name: str, *, max_data_drop: float,
                           max_class_shift: float, max_image_drift: float = 0.0) -> dict:
    """The data-checks step: looks up the champion of the model this run registers into and
    compares. Returns the findings (``passed`` false: the caller stops the run)."""
    # A step's artifact path is a local (or /gcs-mounted) directory: no TensorFlow needed to read it.
    with open(os.path.join(dataset_dir, records.METADATA_FILE)) as handle:
        metadata = json.load(handle)
    registry = open_registry(registry_uri)
    name = model_name_for(registry, model_name, metadata["source"])
    champion = None
    if name in registry.model_names():
        version = registry.champion_version(name)
        champion = registry.version(name, version) if version else None
    found = compare(metadata, champion, name=name, max_data_drop=max_data_drop, max_class_shift=max_class_shift)
    found["registry"] = registry.uri
    found["image_drift_auc"] = None
    if champion is not None:
        # Always measured against a champion; --max-image-drift only decides whether it stops the run.
        drifted = drift_against_champion(dataset_dir, registry.model_dir(f"{name}/{champion.version}"),
                                         champion.version, max_image_drift)
        found["image_drift_auc"] = drifted["image_drift_auc"]
        found["image_drift_most_different"] = drifted.get("image_drift_most_different", [])
        found["findings"] += drifted["findings"]
        found["problems"] += drifted["problems"]
        found["passed"] = not found["problems"]
    for line in found["findings"]:
        print(f"  data checks: {line}", flush=True)
    return found


def raise_if_stopped(found: dict) -> None:
    if not found["passed"]:
        raise ConfigError(stop_sentence(found))
