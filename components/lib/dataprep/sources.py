"""The pipeline's first stage: what a data spec names, listed as units of work (no photo read).

A folder (local or gs://) is listed here, in the launching process: one class per subfolder,
each class's files in sorted order (that order decides which of two identical files is kept).
Generated samples and TFDS sets are listed as the recipes that make their images. Each unit
holds a batch of photos, so a Beam worker does enough per element that the per-element cost of
the runner stays small next to decoding.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from tlp.components.lib.specs import ConfigError, DataSpec, ServiceError

LISTING_UNITS_FILE = "units.jsonl"  # the listing's units, one a line: what the workers read
LISTING_FILE = "listing.json"  # the rest of the listing: class names, files skipped while listing, ...
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# A bucket's class prefixes listed at once: a listing is a chain of page requests, each waiting for
# the one before, so listing one class after another would add up every page's latency.
LISTING_THREADS = 8
LIST_PAGE_SIZE = 1000  # objects per listing request (Cloud Storage's largest page)
PHOTOS_PER_UNIT = 16  # photos a worker reads, digests and encodes per element
TFDS_UNITS_PER_SPLIT = 8  # a TFDS split is read as this many even sub-splits, in parallel


@dataclass
class Photo:
    """One photo after the read stage: where it came from, its class, its content digest and its
    resized JPEG, or the error that stopped it."""

    order: tuple  # (unit, index): its place in the listing; the first of identical files is kept
    source_id: str
    label: int
    digest: str | None = None  # SHA-256 of the file's bytes (None: generated or TFDS)
    # SHA-256 of the resized pixels (``encode.prepare_with_digest``): a picture saved again (other
    # compression, metadata stripped) has other bytes but this digest; deduplication keys on it.
    prepared_digest: str | None = None
    encoded: bytes | None = None
    error: str | None = None
    split: str | None = None  # TFDS: fixed by the slice it was read from
    stored: tuple[int, int] | None = None  # (offset, length) of ``encoded`` in its unit's staged file


@dataclass
class Listing:
    """What the source holds: class names, units of work, files skipped while listing."""

    spec: str
    class_names: list[str]
    units: list[tuple]  # ("files", [(path, label)]) | ("sample", seed, [(source_id, label, index)]) | ("tfds", ...)
    photos: int  # how many photos the units hold
    skipped: list[dict] = field(default_factory=list)
    split: dict | None = None  # TFDS: its slices' record; None: the content split decides


def write_listing(listing: Listing, folder: str) -> str:
    """Writes the listing under ``folder`` (local or gs://) for the workers to read: its units as
    JSON lines (``[index, unit]``) and the rest as ``listing.json``. What the job request then
    carries is a path, however many photos there are. Returns the units file's path."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    units_path = join(folder, LISTING_UNITS_FILE)
    with FileSystems.create(units_path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for start in range(0, len(listing.units), 1024):  # a write per 1,024 units, not per unit
            lines = (json.dumps([index, unit]) + "\n" for index, unit in enumerate(listing.units[start : start + 1024],
                                                                                  start))
            handle.write("".join(lines).encode())
    rest = {"spec": listing.spec, "class_names": listing.class_names, "photos": listing.photos,
            "units": len(listing.units), "skipped": listing.skipped, "split": listing.split}
    with FileSystems.create(join(folder, LISTING_FILE), compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(json.dumps(rest).encode())
    return units_path


def read_unit_line(line: str) -> tuple[int, tuple]:
    """One line of the units file: (its index in the listing, the unit)."""
    index, unit = json.loads(line)
    return index, tuple(unit)


def read_listing(folder: str) -> dict:
    """``listing.json`` of ``write_listing``: spec, class_names, photos, units, skipped, split."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(join(folder, LISTING_FILE), compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return json.loads(handle.read())


def list_source(spec: DataSpec, seed: int, tfds_data_dir: str | None = None) -> Listing:
    if spec.kind == "sample":
        return list_sample(spec.per_class, seed)
    if spec.kind == "folder":
        return list_folder(spec.path)
    return list_tfds(spec.name, tfds_data_dir)


def _batches(items: list, size: int = PHOTOS_PER_UNIT) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def list_sample(per_class: int, seed: int) -> Listing:
    """A generated two-class set (warm circles vs cool squares, drawn by ``sample_pixels``)."""
    class_names = ["circles", "squares"]
    items = [(f"sample/{class_names[label]}/{index:05d}", label, index)
             for label in range(2) for index in range(per_class)]
    units = [("sample", seed, batch) for batch in _batches(items)]
    return Listing(f"sample:{per_class}", class_names, units, len(items))


def sample_pixels(label: int, seed: tuple, size: int = 192):
    """One sample image: both colour and shape separate the classes, so a network with ImageNet
    weights learns it from shape and one with random weights still learns it from colour
    statistics; that keeps offline runs meaningful. Made on the fly: no binary files, no network."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    warm, cool = np.array([215.0, 115.0, 45.0]), np.array([45.0, 115.0, 215.0])
    tint = warm if label == 0 else cool
    background = 0.45 * tint + rng.normal(70, 25, 3)
    image = background + rng.normal(0, 18, (size, size, 3))
    radius = rng.uniform(size * 0.15, size * 0.35)
    cy, cx = rng.uniform(radius, size - radius, 2)
    if label == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    else:
        mask = (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
    image[mask] = tint + rng.normal(0, 20, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def list_folder(root: str) -> Listing:
    """The user's photos: one subfolder per class (nested folders inside a class are walked)."""
    if root.startswith("gs://"):
        in_bucket = list_bucket(root)
        class_names = sorted(in_bucket)
        paths = {name: [path for path, _, _ in in_bucket[name]] for name in class_names}
    else:
        if not _isdir(root):
            raise ConfigError(
                f"--data folder:{root} is not a directory; give a folder holding one subfolder of "
                "images per class."
            )
        class_names = sorted(name.rstrip("/") for name in _listdir(root)
                             if _isdir(join(root, name)) and not name.startswith("."))
        paths = {name: sorted(walk_files(join(root, name))) for name in class_names}
    files, skipped = [], []
    for label, class_name in enumerate(class_names):
        for path in paths[class_name]:
            if path.lower().endswith(IMAGE_EXTENSIONS):
                files.append((path, label))
            else:
                skipped.append({"path": path, "reason": "not an image file (by extension)", "kind": "not_image"})
    require_two_classes(root, class_names, Counter(label for _, label in files), "with images")
    units = [("files", batch) for batch in _batches(files)]
    return Listing(f"folder:{root}", class_names, units, len(files), skipped)


def list_bucket(root: str) -> dict[str, list[tuple[str, int, int]]]:
    """Every object under each class prefix of ``gs://BUCKET/PATH`` (its subfolders not starting
    with "."): class name -> [(gs:// path, size, generation)], sorted by path. The class prefixes
    (one listing with a delimiter) are then listed LISTING_THREADS at a time. A listing Cloud
    Storage refuses raises one sentence naming the bucket and the fix (``read_failure``)."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    try:
        return _list_bucket(root)
    except api.NotFound as error:
        raise ConfigError(f"--data folder:{root}: bucket {bucket_of(root)} does not exist ({error.code} NotFound); "
                          "check the bucket's name.") from error
    except (api.GoogleAPICallError, auth.DefaultCredentialsError, auth.RefreshError) as error:
        raise read_failure(root, error) from error


def _list_bucket(root: str) -> dict[str, list[tuple[str, int, int]]]:
    from concurrent.futures import ThreadPoolExecutor

    from google.cloud import storage

    bucket, _, prefix = root[len("gs://"):].partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    client = storage.Client(project=None)  # listing needs no project, and a step's environment may name none
    top = client.list_blobs(bucket, prefix=prefix, delimiter="/", page_size=LIST_PAGE_SIZE)
    direct = [blob.name for blob in top]  # the prefixes arrive with the pages
    class_prefixes = sorted(p for p in top.prefixes if not p[len(prefix):].startswith("."))
    if not class_prefixes and not direct:
        raise ConfigError(f"--data folder:{root} holds no objects; give a folder holding one subfolder of images "
                          "per class (gs://BUCKET/PATH/CLASS/IMAGE).")

    def one_class(class_prefix: str) -> list[tuple[str, int, int]]:
        blobs = client.list_blobs(bucket, prefix=class_prefix, page_size=LIST_PAGE_SIZE)
        return sorted((f"gs://{bucket}/{blob.name}", int(blob.size or 0), int(blob.generation or 0))
                      for blob in blobs if not blob.name.endswith("/"))  # "folder/" placeholder objects

    with ThreadPoolExecutor(LISTING_THREADS) as pool:
        listed = pool.map(one_class, class_prefixes)
        return {p[len(prefix):].rstrip("/"): objects for p, objects in zip(class_prefixes, listed, strict=True)}


def list_tfds(name: str, data_dir: str | None = None) -> Listing:
    """A TensorFlow Datasets image set with the tutorial's 80/10/10 slices of its train split,
    each read as even sub-splits (the same photos every time, whatever the seed)."""
    import tensorflow_datasets as tfds

    percent_splits = ["train[:80%]", "train[80%:90%]", "train[90%:]"]
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
        class_names = list(builder.info.features["label"].names)
        splits = builder.info.splits
        photos = int(splits["train"].num_examples) if "train" in splits else 0  # 0: not known before reading
    except Exception as error:  # tfds raises many types; name the source and keep the cause
        raise ConfigError(
            f"--data tfds:{name} could not be loaded ({type(error).__name__}: {error}); check the "
            "name on tensorflow.org/datasets and the network, or use folder:PATH or sample."
        ) from error
    units = []
    for split, percent in zip(("train", "val", "test"), percent_splits, strict=True):
        # (slice, parts, which): tfds.even_splits(slice, parts)[which], rebuilt by the worker (a plain
        # value for the listing file, which the tfds object is not)
        units += [("tfds", name, data_dir, split, [percent, TFDS_UNITS_PER_SPLIT, which])
                  for which in range(TFDS_UNITS_PER_SPLIT)]
    record = {"method": f"tfds-slices:{builder.info.full_name}", "slices": percent_splits, "moved": []}
    return Listing(f"tfds:{name}", class_names, units, photos, split=record)


def require_two_classes(root: str, class_names: list[str], counts: Counter, what: str) -> None:
    usable = [name for label, name in enumerate(class_names) if counts[label] > 0]
    if len(usable) < 2:
        found = ", ".join(f"{name!r} ({counts[i]} images)" for i, name in enumerate(class_names))
        raise ConfigError(
            f"--data folder:{root} has {len(usable)} class folder(s) {what} "
            f"({found or 'no subfolders'}); put each class's images in its own subfolder, "
            "at least two classes."
        )


# --- files, local or gs:// ------------------------------------------------------------------


def join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name.lstrip("/")


READ_ROLE = "roles/storage.objectViewer"  # what reading a bucket's photos needs


def read_bytes(path: str) -> bytes:
    """A file's bytes: local files directly, gs:// through Beam's file systems (no TensorFlow,
    so a worker never imports it; the storage client retries 429, 5xx and timeouts itself). A read
    that fails is no bad photo: it raises ``read_failure``'s one sentence, so the step stops (Beam
    retries a failed bundle on Dataflow) instead of training on a data set missing what failed."""
    try:
        if "://" not in path:
            with open(path, "rb") as handle:
                return handle.read()
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return handle.read()
    except Exception as error:  # classified: the caller gets one sentence with the fix
        raise read_failure(path, error) from error


def bucket_of(path: str) -> str:
    return "gs://" + path[len("gs://"):].split("/", 1)[0] if path.startswith("gs://") else path


def read_failure(path: str, error: Exception) -> ServiceError:
    """The one sentence for a file that could not be read: refused (403, 401, no or expired
    credentials: the bucket and the role to grant), gone (404), or still failing after the storage
    client's retries (5xx, timeouts)."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(error, api.GoogleAPICallError):  # its message may run to several sentences: the code says it
        cause = f"{error.code} {type(error).__name__}"
    else:
        cause = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
    if "://" not in path:
        return ServiceError(f"could not read {path} ({cause}); make it readable by the user running tlp, or "
                            "move it out of the folder.")
    bucket = bucket_of(path)
    if isinstance(error, (auth.DefaultCredentialsError, auth.RefreshError)):
        return ServiceError(f"could not read {path}: no valid Google Cloud credentials ({cause}); log in with "
                            "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS to "
                            f"an account with {READ_ROLE} on {bucket}.")
    if isinstance(error, (api.Forbidden, api.Unauthorized)):
        return ServiceError(f"reading {path} was refused ({cause}): the account in use lacks {READ_ROLE} on "
                            f"bucket {bucket}; grant it that role (gcloud storage buckets add-iam-policy-binding "
                            f"{bucket} --member=ACCOUNT --role={READ_ROLE}) or use an account that has it.")
    if isinstance(error, api.NotFound):
        return ServiceError(f"{path} was listed but is gone ({cause}); run the step again once {bucket} "
                            "stops changing.")
    return ServiceError(f"reading {path} from {bucket} still failed after the storage client's retries ({cause}); "
                        "no photo is left out for it: run the step again when Cloud Storage answers.")


def _isdir(path: str) -> bool:
    if "://" not in path:
        return os.path.isdir(path)
    import tensorflow as tf

    return tf.io.gfile.isdir(path)


def _listdir(path: str) -> list[str]:
    if "://" not in path:
        return os.listdir(path)
    import tensorflow as tf

    return tf.io.gfile.listdir(path)


def walk_files(root: str) -> Iterator[str]:
    """Every file under root. Local folders follow symlinks (photo libraries often link folders in)
    but enter each real directory once: gfile.walk loops on a link back up the tree until ELOOP."""
    if "://" in root:
        import tensorflow as tf

        for directory, _subdirs, names in tf.io.gfile.walk(root):
            for name in names:
                yield join(directory, name)
        return
    top = os.path.realpath(root)
    seen = {top}
    for directory, subdirs, names in os.walk(root, followlinks=True):
        kept = []
        for name in sorted(subdirs):
            real = os.path.realpath(os.path.join(directory, name))
            if top.startswith(real.rstrip(os.sep) + os.sep):
                continue  # a link up the tree would pull in the other classes
            if real not in seen:  # marked here, not on entry, so two links to one folder count once
                seen.add(real)
                kept.append(name)
        subdirs[:] = kept
        for name in names:
            yield join(directory, name)
