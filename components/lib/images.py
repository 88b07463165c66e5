"""Image sources and the prepared data set on disk.

A prepared data set is a directory holding, per split, TFRecord shards of JPEG images already
resized to the model's input size, and ``metadata.json`` (class names, per-split per-class
counts, image size, source spec, skipped files). Reading it back is a streaming tf.data
pipeline, so memory stays flat however many images there are.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from tlp.components.lib.specs import ConfigError, DataSpec

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # the tutorial's 80/10/10
METADATA_FILE = "metadata.json"
SHARD_SIZE = 1000
SHUFFLE_BUFFER = 4096  # training-stream shuffle; the cut cache (cut_cache.py) shuffles record positions the same way
JPEG_QUALITY = 95
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_MAX_SKIPPED_FRACTION = 0.10
# PIL refuses images above ~179 Mpx as decompression bombs; our own ceiling is explicit (decode_bytes).
MAX_PIXELS = 200_000_000


@dataclass
class Example:
    """One source image before resizing: where it came from, its class, its pixels or bytes."""

    source_id: str
    label: int
    pixels: np.ndarray | None = None  # uint8 HxWx3
    path: str | None = None  # a file to read instead
    encoded: bytes | None = None  # already resized and JPEG-encoded
    generate: Callable[[], np.ndarray] | None = None  # makes the pixels on demand (sample data)


@dataclass
class PreparedSplits:
    class_names: list[str]
    splits: dict[str, list[Example]]
    skipped: list[dict] = field(default_factory=list)


# --- sources --------------------------------------------------------------------------------


def sample_examples(per_class: int, seed: int) -> PreparedSplits:
    """A generated two-class set: warm circles vs cool squares on noisy backgrounds.

    Both colour and shape separate the classes, so a network with ImageNet weights learns it
    from shape and one with random weights still learns it from colour statistics; that keeps
    offline runs meaningful. Made on the fly: no binary files in git, no network.
    """
    class_names = ["circles", "squares"]
    examples = [
        Example(
            f"sample/{class_names[label]}/{index:05d}", label,
            generate=functools.partial(_sample_pixels, label, (seed, label, index)),
        )
        for label in range(2)
        for index in range(per_class)
    ]
    return PreparedSplits(class_names, stratified_split(examples, seed))


def _sample_pixels(label: int, seed: tuple, size: int = 192) -> np.ndarray:
    """One sample image, drawn when written: memory stays flat however many are asked for."""
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


def folder_examples(root: str, seed: int, image_size: int) -> PreparedSplits:
    """The user's photos: one subfolder per class (nested folders inside a class are walked)."""
    import tensorflow as tf  # gfile reads local paths and gs:// alike

    if not tf.io.gfile.isdir(root):
        raise ConfigError(
            f"--data folder:{root} is not a directory; give a folder holding one subfolder of "
            "images per class."
        )
    class_names = sorted(
        name.rstrip("/")
        for name in tf.io.gfile.listdir(root)
        if tf.io.gfile.isdir(_join(root, name)) and not name.startswith(".")
    )
    examples, skipped = [], []
    for label, class_name in enumerate(class_names):
        for path in sorted(_walk_files(_join(root, class_name))):
            if path.lower().endswith(IMAGE_EXTENSIONS):
                examples.append(Example(path, label, path=path))
            else:
                skipped.append({"path": path, "reason": "not an image file (by extension)", "kind": "not_image"})
    _require_two_classes(root, class_names, examples, "with images")
    examples, skipped = _encode_files(examples, skipped, image_size)
    _require_two_classes(root, class_names, examples, "with readable images")
    return PreparedSplits(class_names, stratified_split(examples, seed), skipped)


def _require_two_classes(root: str, class_names: list[str], examples: list[Example], what: str) -> None:
    counts = Counter(example.label for example in examples)
    usable = [name for label, name in enumerate(class_names) if counts[label] > 0]
    if len(usable) < 2:
        found = ", ".join(f"{name!r} ({counts[i]} images)" for i, name in enumerate(class_names))
        raise ConfigError(
            f"--data folder:{root} has {len(usable)} class folder(s) {what} "
            f"({found or 'no subfolders'}); put each class's images in its own subfolder, "
            "at least two classes."
        )


def _encode_files(examples: list[Example], skipped: list[dict], image_size: int):
    """Decodes and resizes every file once, before splitting, so that unreadable files and
    exact duplicates never unbalance the split. Resized JPEGs are small (~10 KB at 160 px)."""
    readable, seen = [], {}
    for count, example in enumerate(examples, 1):
        try:
            with _open(example.path) as handle:
                data = handle.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                original, original_label = seen[digest]
                reason = f"exact duplicate of {original} (kept once, in one split)"
                if original_label != example.label:  # the same photo filed under two classes
                    reason = f"same bytes as {original} in another class folder: a labelling conflict, kept there only"
                skipped.append({"path": example.path, "reason": reason, "kind": "duplicate"})
                continue
            pixels = decode_bytes(data, image_size)
            example.encoded = encode_example(pixels, image_size)
        except Exception as error:  # any decoder failure means "skip and say why"
            reason = f"{type(error).__name__}: {error}"
            skipped.append({"path": example.path, "reason": reason, "kind": "unreadable"})
            continue
        seen[digest] = (example.path, example.label)
        readable.append(example)
        if count % 500 == 0:
            print(f"  data prep: read {count}/{len(examples)} files", flush=True)
    return readable, skipped


def tfds_examples(name: str, data_dir: str | None = None) -> PreparedSplits:
    """A TensorFlow Datasets image set with the tutorial's 80/10/10 split of its train split."""
    import tensorflow_datasets as tfds

    percent_splits = ["train[:80%]", "train[80%:90%]", "train[90%:]"]
    try:
        datasets, info = tfds.load(
            name, split=percent_splits, with_info=True, as_supervised=False, data_dir=data_dir
        )
    except Exception as error:  # tfds raises many types; name the source and keep the cause
        raise ConfigError(
            f"--data tfds:{name} could not be loaded ({type(error).__name__}: {error}); check the "
            "name on tensorflow.org/datasets and the network, or use folder:PATH or sample."
        ) from error
    class_names = list(info.features["label"].names)
    splits = {}
    for split, dataset in zip(SPLITS, datasets, strict=True):
        splits[split] = _TfdsSplit(dataset, name, split)
    return PreparedSplits(class_names, splits)


class _TfdsSplit:
    """A lazily iterated tfds split that yields Examples (keeps memory flat)."""

    def __init__(self, dataset, name: str, split: str):
        self._dataset, self._name, self._split = dataset, name, split

    def __iter__(self) -> Iterator[Example]:
        for index, record in enumerate(self._dataset.as_numpy_iterator()):
            filename = record.get("image/filename", b"")
            if isinstance(filename, bytes):
                filename = filename.decode("utf-8", "replace")
            source_id = filename or f"tfds:{self._name}/{self._split}/{index}"
            yield Example(source_id, int(record["label"]), pixels=record["image"])


def load_examples(spec: DataSpec, seed: int, image_size: int, tfds_data_dir: str | None = None) -> PreparedSplits:
    if spec.kind == "sample":
        return sample_examples(spec.per_class, seed)
    if spec.kind == "folder":
        return folder_examples(spec.path, seed, image_size)
    return tfds_examples(spec.name, tfds_data_dir)


# --- splitting ------------------------------------------------------------------------------


def stratified_split(examples: list[Example], seed: int) -> dict[str, list[Example]]:
    """Deterministic, stratified 80/10/10 split: each class is shuffled with the seed and cut."""
    by_class: dict[int, list[Example]] = {}
    for example in examples:
        by_class.setdefault(example.label, []).append(example)
    splits: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda e: e.source_id)
        random.Random(f"{seed}-{label}").shuffle(members)
        n_train = int(round(len(members) * SPLIT_FRACTIONS[0]))
        n_val = int(round(len(members) * SPLIT_FRACTIONS[1]))
        splits["train"] += members[:n_train]
        splits["val"] += members[n_train : n_train + n_val]
        splits["test"] += members[n_train + n_val :]
    for split in SPLITS:  # mix classes so shards and batches are not sorted by label
        random.Random(f"{seed}-{split}").shuffle(splits[split])
    return splits


# --- decoding and resizing ------------------------------------------------------------------


def decode_file(path: str, max_side: int) -> np.ndarray:
    with _open(path) as handle:
        return decode_bytes(handle.read(), max_side)


def decode_bytes(data: bytes, max_side: int) -> np.ndarray:
    """Decodes an image file's bytes into uint8 RGB: EXIF orientation applied, palette/grayscale/
    RGBA/CMYK converted, GIF first frame, and big JPEGs decoded at a reduced scale to bound memory."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    if not data:
        raise ValueError("empty file (0 bytes)")
    with Image.open(io.BytesIO(data)) as image:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make the ceiling a hard one.
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(f"{image.width}x{image.height} pixels is above the {MAX_PIXELS:,} pixel ceiling")
        image.draft("RGB", (max_side * 2, max_side * 2))  # JPEG only: decode near target size
        image.seek(0)
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            flat = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(flat, image)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize(pixels, image_size: int):
    """The one resize used by data prep and by the serving signature (bilinear, antialiased)."""
    import tensorflow as tf

    return tf.image.resize(pixels, [image_size, image_size], method="bilinear", antialias=True)


def encode_example(pixels: np.ndarray, image_size: int) -> bytes:
    import tensorflow as tf

    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    pixels = pixels[..., :3]

    resized = tf.cast(tf.round(tf.clip_by_value(resize(pixels, image_size), 0, 255)), tf.uint8)
    return tf.io.encode_jpeg(resized, quality=JPEG_QUALITY).numpy()


# --- the prepared data set on disk ----------------------------------------------------------


def write_prepared(
    prepared: PreparedSplits,
    output_dir: str,
    image_size: int,
    source: str,
    progress: bool = True,
) -> dict:
    """Resizes every example, writes TFRecord shards per split and ``metadata.json``.

    Unreadable files are skipped and listed with their reason. Returns the metadata.
    """
    import tensorflow as tf

    tf.io.gfile.makedirs(output_dir)
    counts: dict[str, dict[str, int]] = {}
    files: dict[str, list[str]] = {}
    skipped = list(prepared.skipped)
    digest = hashlib.sha256()
    for split in SPLITS:
        per_class: Counter = Counter()
        files[split] = []
        writer, in_shard = None, 0
        for example in _iterate(prepared.splits[split]):
            try:
                encoded = example.encoded
                if encoded is None:
                    if example.pixels is not None:
                        pixels = example.pixels
                    elif example.generate is not None:
                        pixels = example.generate()
                    else:
                        pixels = decode_file(example.path, image_size)
                    encoded = encode_example(pixels, image_size)
            except Exception as error:  # any decoder failure means "skip and say why"
                reason = f"{type(error).__name__}: {error}"
                skipped.append({"path": example.source_id, "reason": reason, "kind": "unreadable"})
                continue
            if writer is None or in_shard >= SHARD_SIZE:
                if writer is not None:
                    writer.close()
                name = f"{split}-{len(files[split]):05d}.tfrecord"
                files[split].append(name)
                writer = tf.io.TFRecordWriter(_join(output_dir, name))
                in_shard = 0
            writer.write(_serialize(encoded, example.label, example.source_id))
            digest.update(encoded)
            in_shard += 1
            per_class[prepared.class_names[example.label]] += 1
            total = sum(per_class.values())
            if progress and total % 500 == 0:
                print(f"  data prep: {split}: {total} images written", flush=True)
        if writer is not None:
            writer.close()
        counts[split] = {name: per_class.get(name, 0) for name in prepared.class_names}
    metadata = {
        "source": source,
        "class_names": prepared.class_names,
        "image_size": image_size,
        "counts": counts,
        "files": files,
        "num_examples": {split: sum(counts[split].values()) for split in SPLITS},
        "skipped": skipped,
        "fingerprint": digest.hexdigest()[:16],
        "format": "tfrecord: image (JPEG bytes), label (int64), source_id (bytes)",
    }
    with tf.io.gfile.GFile(_join(output_dir, METADATA_FILE), "w") as handle:
        json.dump(metadata, handle, indent=2)
    return metadata


def read_metadata(dataset_dir: str) -> dict:
    import tensorflow as tf

    path = _join(dataset_dir, METADATA_FILE)
    if not tf.io.gfile.exists(path):
        raise ConfigError(
            f"{dataset_dir} holds no {METADATA_FILE}; pass the Dataset output of the data-prep "
            "component (tlp component data-prep writes one)."
        )
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def read_split(
    dataset_dir: str,
    split: str,
    batch_size: int | None = None,
    *,
    shuffle_seed: int | None = None,
    with_source_ids: bool = False,
    repeat: bool = False,
    cache_decoded: bool = False,
    worker: tuple[int, int] = (0, 1),
):
    """A tf.data pipeline over one split: (uint8 image, label) or (image, label, source_id).

    ``cache_decoded`` keeps the decoded images in memory after the first pass, so later epochs
    spend no CPU on JPEG decoding (on a CPU-only machine that CPU is taken from training).
    ``worker`` = (index, count) reads only that worker's shard files, the ones
    ``AutoShardPolicy.FILE`` gives it (every count-th file from the index-th)."""
    import tensorflow as tf

    metadata = read_metadata(dataset_dir)
    image_size = metadata["image_size"]
    paths = [_join(dataset_dir, name) for name in metadata["files"][split]][worker[0] :: worker[1]]
    if not paths:
        raise ConfigError(f"the {split} split of {dataset_dir} is empty; prepare more images.")
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "source_id": tf.io.FixedLenFeature([], tf.string),
    }

    def parse(record):
        parsed = tf.io.parse_single_example(record, spec)
        image = tf.io.decode_jpeg(parsed["image"], channels=3)
        image = tf.ensure_shape(image, [image_size, image_size, 3])
        if with_source_ids:
            return image, parsed["label"], parsed["source_id"]
        return image, parsed["label"]

    dataset = tf.data.TFRecordDataset(paths)
    if cache_decoded:
        dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if not cache_decoded:
        dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if batch_size:
        dataset = dataset.batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


# --- helpers --------------------------------------------------------------------------------


def _serialize(encoded: bytes, label: int, source_id: str) -> bytes:
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[source_id.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _iterate(examples: Iterable[Example]) -> Iterator[Example]:
    yield from examples


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name.lstrip("/")


def _open(path: str):
    import tensorflow as tf

    return tf.io.gfile.GFile(path, "rb")


def _walk_files(root: str) -> Iterator[str]:
    """Every file under root. Local folders follow symlinks (photo libraries often link folders in)
    but enter each real directory once: gfile.walk loops on a link back up the tree until ELOOP."""
    if "://" in root:
        import tensorflow as tf

        for directory, _subdirs, names in tf.io.gfile.walk(root):
            for name in names:
                yield _join(directory, name)
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
            yield _join(directory, name)


def prepare_dataset(
    data: str,
    output_dir: str,
    *,
    image_size: int = 160,
    seed: int = 42,
    max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION,
    tfds_data_dir: str | None = None,
) -> dict:
    """The data-prep step: parse the spec, load, split 80/10/10, resize, write. Returns metadata.

    Fails (ConfigError) when more than ``max_skipped_fraction`` of the image files could not be
    read, or when a class has no image left for some split."""
    from tlp.components.lib.specs import MIN_IMAGE_SIZE, parse_data_spec

    spec = parse_data_spec(data)
    if not (isinstance(image_size, int) and image_size >= MIN_IMAGE_SIZE):
        raise ConfigError(f"--image-size {image_size!r} must be a whole number of at least {MIN_IMAGE_SIZE}.")
    prepared = load_examples(spec, seed, image_size, tfds_data_dir)
    print(f"  data prep: {spec} -> {len(prepared.class_names)} classes {prepared.class_names}", flush=True)
    if not 0.0 <= max_skipped_fraction <= 1.0:
        raise ConfigError(f"--max-skipped-fraction {max_skipped_fraction!r} must lie between 0 and 1 (default 0.1).")
    metadata = write_prepared(prepared, output_dir, image_size, str(spec))
    unreadable = sum(1 for s in metadata["skipped"] if s.get("kind") == "unreadable")
    candidates = unreadable + sum(metadata["num_examples"].values()) + sum(
        1 for s in metadata["skipped"] if s.get("kind") == "duplicate"
    )
    if candidates and unreadable / candidates > max_skipped_fraction:
        raise ConfigError(
            f"{unreadable} of {candidates} image files of {spec} could not be read "
            f"({unreadable / candidates:.0%} > --max-skipped-fraction {max_skipped_fraction:g}); "
            f"fix or remove them (each is listed in {output_dir}/metadata.json) or raise the limit."
        )
    for split in SPLITS:
        empty = [name for name, n in metadata["counts"][split].items() if n == 0]
        if empty:
            raise ConfigError(
                f"the {split} split has no images of class(es) {empty} after the 80/10/10 split "
                f"of {spec}; add images (at least 10 per class) or drop those classes."
            )
    print(f"  data prep: images per split {metadata['num_examples']}, skipped {len(metadata['skipped'])}", flush=True)
    return metadata
