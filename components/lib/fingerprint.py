"""What the data source holds right now, as one fingerprint.

This is the pipeline's first step and it is never cached. Data prep takes its fingerprint as an
input, so Vertex AI's (and Kubeflow's) cache reuses data prep, and everything after it, exactly
when the data did not change, and runs them again when one photo did. Without it, data prep's
inputs are only parameters (``folder:gs://bucket/photos``, image size, seed) that look the same
every week, and a scheduled run would get last week's data set back from the cache.

What goes in, per source (listing only: no image is read):

- ``folder:PATH`` on a local disk: each image file's path under PATH, size and modification time
  (nanoseconds). A file touched without changing its bytes counts as changed.
- ``folder:gs://BUCKET/PATH``: each image object's name, size and generation (Cloud Storage gives
  every write of an object a new generation). One request per 1,000 objects, the class prefixes
  listed in parallel.
- ``tfds:NAME``: the data set's full name and version (``cats_vs_dogs/4.0.1``).
- ``sample[:N]``: the spec (the generated images are a function of the spec and the seed, which
  data prep receives itself).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from tlp.components.lib.dataprep import sources
from tlp.components.lib.specs import ConfigError, DataSpec, parse_data_spec


@dataclass(frozen=True)
class SourceFingerprint:
    fingerprint: str  # 16 hex digits
    files: int  # image files (objects) listed; 0 for tfds and sample
    total_bytes: int
    description: str  # one line for people: what was listed


def fingerprint_source(data: str) -> SourceFingerprint:
    """The fingerprint of what ``data`` (a data spec) names, as it is now."""
    spec = parse_data_spec(data)
    if spec.kind == "folder" and spec.path.startswith("gs://"):
        entries = _gcs_entries(spec.path)
    elif spec.kind == "folder":
        entries = _local_entries(spec.path)
    elif spec.kind == "tfds":
        return _identity(spec, f"tfds:{_tfds_full_name(spec.name)}")
    else:
        return _identity(spec, str(spec))
    digest = hashlib.sha256(f"{spec}\n".encode())
    total = 0
    for name, size, version in sorted(entries):
        digest.update(f"{name}\t{size}\t{version}\n".encode())
        total += size
    description = f"{spec}: {len(entries)} image files, {total / 1e6:.1f} MB"
    return SourceFingerprint(digest.hexdigest()[:16], len(entries), total, description)


def _identity(spec: DataSpec, identity: str) -> SourceFingerprint:
    return SourceFingerprint(hashlib.sha256(identity.encode()).hexdigest()[:16], 0, 0, f"{spec}: {identity}")


def _is_image(relative: str) -> bool:
    """An image file inside a class folder, as data prep reads it (hidden class folders are not classes)."""
    class_name, sep, _rest = relative.partition("/")
    return bool(sep) and not class_name.startswith(".") and relative.lower().endswith(sources.IMAGE_EXTENSIONS)


def _local_entries(root: str) -> list[tuple[str, int, int]]:
    if not os.path.isdir(root):
        raise ConfigError(
            f"--data folder:{root} is not a directory; give a folder holding one subfolder of images per class."
        )
    entries = []
    for class_name in sorted(os.listdir(root)):
        class_dir = os.path.join(root, class_name)
        if not os.path.isdir(class_dir):
            continue
        for path in sources.walk_files(class_dir):  # the same walk as data prep (symlinks, loops)
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            if _is_image(relative):
                status = os.stat(path)
                entries.append((relative, status.st_size, status.st_mtime_ns))
    return entries


def _gcs_entries(uri: str) -> list[tuple[str, int, int]]:
    """The bucket's image objects, listed by class prefix in parallel (``sources.list_bucket``,
    the listing data prep makes too)."""
    root = uri.rstrip("/") + "/"
    entries = []
    for objects in sources.list_bucket(uri).values():
        for path, size, generation in objects:
            relative = path[len(root):]
            if _is_image(relative):
                entries.append((relative, size, generation))
    return entries


def _tfds_full_name(name: str) -> str:
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name).info.full_name
    except Exception as error:  # tfds raises many types; name the source and keep the cause
        raise ConfigError(
            f"--data tfds:{name} is not a TFDS data set I can find ({type(error).__name__}: {error}); check the "
            "name on tensorflow.org/datasets."
        ) from error
