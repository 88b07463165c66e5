"""Image sources and the prepared data set on disk.

A prepared data set is a directory holding, per split, TFRecord shards of JPEG images already
resized to the model's input size, and ``metadata.json`` (class names, per-split per-class
counts, image size, source spec, skipped files). Reading it back is a streaming tf.data
pipeline, so memory stays flat however many images there are.

Data prep decodes, resizes and encodes on every core: a pool of worker processes does that work
while this process writes the results in their input order, so the shards are byte for byte
the ones a single process writes. Shards are many and small enough for
``AutoShardPolicy.FILE`` (see ``records_per_shard`` and ``auto_shard_policy``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
import json
import math
import os
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from tlp.components.lib.specs import MIN_IMAGE_SIZE, ConfigError, DataSpec, parse_data_spec

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # the tutorial's 80/10/10
METADATA_FILE = "metadata.json"
SHARD_SIZE = 1000  # records per shard when a split's size is not known in advance
# Shards: about TARGET_SHARD_BYTES each for big sets, but at least SHARDS_PER_WORKER per worker of the
# largest multi-worker run the data set should serve (AutoShardPolicy.FILE gives each worker whole
# files), and never below MIN_SHARD_RECORDS records, so small sets keep few files (and DATA sharding).
TARGET_SHARD_BYTES = 128 * 2**20
SHARDS_PER_WORKER = 4
DEFAULT_MAX_WORKERS = 8
MIN_SHARD_RECORDS = 16
JPEG_BYTES_PER_PIXEL = 0.5  # a resized quality-95 JPEG: ~13 KB at 160 px
# Below this many images one process does the work: starting worker processes (each imports
# TensorFlow, ~3 s) would cost more than it saves.
PARALLEL_MIN_IMAGES = 1000
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
    content_hash: str | None = None  # SHA-256 of the file's bytes (decides its split)
    stored: tuple[int, int] | None = None  # (offset, length) of its encoded bytes in PreparedSplits.store


@dataclass
class PreparedSplits:
    class_names: list[str]
    splits: dict[str, list[Example]]
    skipped: list[dict] = field(default_factory=list)
    store: _EncodedStore | None = None  # encoded images kept on local disk, not in memory
    split: dict = field(default_factory=dict)  # how the splits were made (method, seed, moved photos)
    source_fingerprint: str = ""  # the data-fingerprint step's listing of the source


class _EncodedStore:
    """Encoded images appended to an anonymous temporary file (gone when closed or when the
    process ends), so holding every resized photo between reading and writing costs no memory."""

    def __init__(self):
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._end = 0

    def put(self, data: bytes) -> tuple[int, int]:
        self._file.write(data)
        reference = (self._end, len(data))
        self._end += len(data)
        return reference

    def get(self, reference: tuple[int, int]) -> bytes:
        self._file.flush()
        offset, length = reference
        return os.pread(self._file.fileno(), length, offset)

    def close(self) -> None:
        self._file.close()


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
    splits, record = split_by_content(examples, seed)
    return PreparedSplits(class_names, splits, split=record)


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


def folder_examples(root: str, seed: int, image_size: int, processes: int | None = None) -> PreparedSplits:
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
    store = _EncodedStore()
    examples, skipped = _encode_files(examples, skipped, image_size, store, processes)
    _require_two_classes(root, class_names, examples, "with readable images")
    splits, record = split_by_content(examples, seed)
    return PreparedSplits(class_names, splits, skipped, store, split=record)


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


def _encode_files(examples: list[Example], skipped: list[dict], image_size: int, store: _EncodedStore,
                  processes: int | None = None):
    """Decodes and resizes every file once, before splitting, so that unreadable files and
    exact duplicates never unbalance the split. Resized JPEGs (~10 KB at 160 px) go to ``store``.
    Files are read and encoded on ``processes`` worker processes; the verdicts (duplicate,
    unreadable, kept) are taken here in file order, as one process would take them."""
    readable, seen = [], {}
    work = functools.partial(_read_and_encode, image_size=image_size)
    with _Pool(_processes(processes, len(examples))) as pool:
        progress = _Progress("read", "files", len(examples), pool.processes)
        results = pool.map(work, [example.path for example in examples])
        for example, (digest, encoded, error) in zip(examples, results, strict=True):
            progress.tick()
            if digest is not None and digest in seen:
                original, original_label = seen[digest]
                reason = f"exact duplicate of {original} (kept once, in one split)"
                if original_label != example.label:  # the same photo filed under two classes
                    reason = f"same bytes as {original} in another class folder: a labelling conflict, kept there only"
                skipped.append({"path": example.path, "reason": reason, "kind": "duplicate"})
                continue
            if error is not None:
                skipped.append({"path": example.path, "reason": error, "kind": "unreadable"})
                continue
            example.stored = store.put(encoded)
            seen[digest] = (example.path, example.label)
            example.content_hash = digest
            readable.append(example)
    return readable, skipped


def _read_and_encode(path: str, image_size: int) -> tuple[str | None, bytes | None, str | None]:
    """(sha256 of the file, resized JPEG, None), or the error that stopped it as its third item
    (the digest too when the file could be read)."""
    digest = None
    try:
        with _open(path) as handle:
            data = handle.read()
        digest = hashlib.sha256(data).hexdigest()
        return digest, encode_example(decode_bytes(data, image_size), image_size), None
    except Exception as error:  # any decoder failure means "skip and say why"
        return digest, None, f"{type(error).__name__}: {error}"


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
    # The tutorial's slices of one TFDS version: the same photos every time, whatever the seed.
    record = {"method": f"tfds-slices:{info.full_name}", "slices": percent_splits, "moved": []}
    return PreparedSplits(class_names, splits, split=record)


class _TfdsSplit:
    """A lazily iterated tfds split that yields Examples (keeps memory flat)."""

    def __init__(self, dataset, name: str, split: str):
        self._dataset, self._name, self._split = dataset, name, split

    def size(self) -> int | None:
        """The number of images, if tfds knows it without reading them."""
        count = int(self._dataset.cardinality())
        return count if count >= 0 else None

    def __iter__(self) -> Iterator[Example]:
        for index, record in enumerate(self._dataset.as_numpy_iterator()):
            filename = record.get("image/filename", b"")
            if isinstance(filename, bytes):
                filename = filename.decode("utf-8", "replace")
            source_id = filename or f"tfds:{self._name}/{self._split}/{index}"
            yield Example(source_id, int(record["label"]), pixels=record["image"])


def load_examples(spec: DataSpec, seed: int, image_size: int, tfds_data_dir: str | None = None,
                  processes: int | None = None) -> PreparedSplits:
    if spec.kind == "sample":
        return sample_examples(spec.per_class, seed)
    if spec.kind == "folder":
        return folder_examples(spec.path, seed, image_size, processes)
    return tfds_examples(spec.name, tfds_data_dir)


# --- splitting ------------------------------------------------------------------------------


# Only photos this close to a split boundary (in position) may move to balance a class, so a photo
# that is in train for one data set is never in test for another (same seed): train stays below
# 0.8 + BAND, test above 0.9 - BAND.
SPLIT_BAND = 0.04
BALANCED_FROM = 500  # photos per class from which each split is held within BALANCE_POINTS of 80/10/10
BALANCE_POINTS = 0.02
SPLIT_METHOD = "content-sha256"


def split_position(identity: str, seed: int) -> float:
    """Where a photo falls on [0, 1), from the SHA-256 of its content salted with the seed:
    below 0.8 train, below 0.9 val, else test. Other photos have no say in it."""
    digest = hashlib.sha256(f"tlp-split:{seed}:{identity}".encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


def _identity(example: Example) -> str:
    """The photo's content hash (folders: SHA-256 of the file); generated samples are a function of
    their name and the seed, so the name stands for the content."""
    return example.content_hash or hashlib.sha256(example.source_id.encode()).hexdigest()


def _natural_split(position: float) -> str:
    return "train" if position < SPLIT_FRACTIONS[0] else "val" if position < sum(SPLIT_FRACTIONS[:2]) else "test"


def split_by_content(examples: list[Example], seed: int) -> tuple[dict[str, list[Example]], dict]:
    """Stable, stratified 80/10/10 split: each photo's split comes from its content and the seed
    (``split_position``), so adding, removing or renaming photos moves no other photo. Two
    exceptions, both recorded in the returned ``moved`` list: in a class of ``BALANCED_FROM`` or
    more photos whose shares land more than ``BALANCE_POINTS`` off 80/10/10, the fewest photos
    nearest a boundary (within ``SPLIT_BAND``) move to the adjacent split; and in a class of 3 or
    more, an empty split takes the photo nearest to it. Returns the splits and the record of the
    method for ``metadata.json``."""
    by_class: dict[int, list[tuple[float, Example]]] = {}
    for example in examples:
        by_class.setdefault(example.label, []).append((split_position(_identity(example), seed), example))
    splits: dict[str, list[tuple[float, Example]]] = {split: [] for split in SPLITS}
    moved: list[dict] = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda item: (item[0], item[1].source_id))
        assigned = {split: [m for m in members if _natural_split(m[0]) == split] for split in SPLITS}
        if len(members) >= BALANCED_FROM:
            _balance(assigned, len(members), moved)
        _fill_empty(assigned, moved)
        for split in SPLITS:
            splits[split] += assigned[split]
    record = {
        "method": SPLIT_METHOD, "seed": seed, "fractions": list(SPLIT_FRACTIONS), "band": SPLIT_BAND,
        "balanced_from": BALANCED_FROM, "balance_points": BALANCE_POINTS, "moved": moved,
    }
    # Ordered by position: classes interleave in shards and batches, and the order is stable too.
    return {split: [e for _, e in sorted(splits[split], key=lambda m: m[0])] for split in SPLITS}, record


def _move(assigned: dict, source: str, target: str, count: int, highest: bool, limit: float, moved: list, why: str):
    """Moves up to ``count`` photos of ``source`` nearest to ``target`` (highest or lowest position,
    not beyond ``limit``) over to ``target``."""
    candidates = sorted(assigned[source], key=lambda m: m[0], reverse=highest)
    chosen = [m for m in candidates if (m[0] >= limit if highest else m[0] < limit)][:count]
    for member in chosen:
        assigned[source].remove(member)
        assigned[target].append(member)
        moved.append({"source_id": member[1].source_id, "from": source, "to": target, "why": why})


def _balance(assigned: dict, n: int, moved: list) -> None:
    """Brings a large class's shares within BALANCE_POINTS of 80/10/10 with the fewest moves."""
    window = {
        split: (math.ceil((share - BALANCE_POINTS) * n - 1e-9), math.floor((share + BALANCE_POINTS) * n + 1e-9))
        for split, share in zip(SPLITS, SPLIT_FRACTIONS, strict=True)
    }
    natural = {split: len(assigned[split]) for split in SPLITS}
    final = {split: min(max(natural[split], window[split][0]), window[split][1]) for split in ("train", "test")}
    for _ in range(n):  # val takes what train and test leave; nudge them until it fits its window too
        val = n - final["train"] - final["test"]
        if val < window["val"][0]:
            split = max(("train", "test"), key=lambda s: final[s] - window[s][0])
            if final[split] <= window[split][0]:
                break
            final[split] -= 1
        elif val > window["val"][1]:
            split = max(("train", "test"), key=lambda s: window[s][1] - final[s])
            if final[split] >= window[split][1]:
                break
            final[split] += 1
        else:
            break
    train_edge, test_edge = SPLIT_FRACTIONS[0], SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]
    more_test, more_train = final["test"] - natural["test"], final["train"] - natural["train"]
    if more_test > 0:
        _move(assigned, "val", "test", more_test, True, test_edge - SPLIT_BAND, moved, "balance")
    elif more_test < 0:
        _move(assigned, "test", "val", -more_test, False, test_edge + SPLIT_BAND, moved, "balance")
    if more_train > 0:
        _move(assigned, "val", "train", more_train, False, train_edge + SPLIT_BAND, moved, "balance")
    elif more_train < 0:
        _move(assigned, "train", "val", -more_train, True, train_edge - SPLIT_BAND, moved, "balance")


def _fill_empty(assigned: dict, moved: list) -> None:
    """A class of 3 or more photos gets at least one in each split: an empty split takes the
    photo nearest to it from a neighbour that can spare one."""
    if sum(len(members) for members in assigned.values()) < len(SPLITS):
        return
    donors = {"train": (("val", False), ("test", False)), "test": (("val", True), ("train", True)),
              "val": (("train", True), ("test", False))}
    for split in ("train", "test", "val"):
        if assigned[split]:
            continue
        for source, highest in donors[split]:
            if len(assigned[source]) >= 2:
                _move(assigned, source, split, 1, highest, -1.0 if highest else 2.0, moved, "small class")
                break


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
    *,
    processes: int | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    min_shard_records: int = MIN_SHARD_RECORDS,
) -> dict:
    """Resizes every example, writes TFRecord shards per split and ``metadata.json``.

    The resizing and encoding run on ``processes`` worker processes (default: every core for
    200 images or more), the writing here, in input order: the files are the same bytes whatever
    ``processes`` is. Each split gets ``records_per_shard(its size, image_size, max_workers)``
    records per shard. Unreadable files are skipped and listed with their reason. Returns the
    metadata.
    """
    import tensorflow as tf

    tf.io.gfile.makedirs(output_dir)
    counts: dict[str, dict[str, int]] = {}
    files: dict[str, list[str]] = {}
    skipped = list(prepared.skipped)
    digest = hashlib.sha256()
    sizes = {split: _size(prepared.splits[split]) for split in SPLITS}
    to_encode = sum(_size(prepared.splits[split], needing_work=True) or 0 for split in SPLITS)
    unknown = any(size is None for size in sizes.values())
    work = functools.partial(_encode_example, image_size=image_size)
    nothing_to_do = not unknown and to_encode == 0  # e.g. a folder source: encoded while it was read
    with _Pool(1 if nothing_to_do else _processes(processes, None if unknown else to_encode)) as pool:
        for split in SPLITS:
            per_class: Counter = Counter()
            files[split] = []
            writer, in_shard = None, 0
            per_shard = records_per_shard(sizes[split], image_size, max_workers, min_shard_records)
            ticker = _Progress(f"{split}:", "images", sizes[split], pool.processes, "written") if progress else None
            examples = prepared.splits[split]
            encodings = pool.map(work, examples, ready=functools.partial(_already_encoded, store=prepared.store))
            for example, (encoded, error) in zip(examples, encodings, strict=True):
                if ticker:
                    ticker.tick()
                if error is not None:
                    skipped.append({"path": example.source_id, "reason": error, "kind": "unreadable"})
                    continue
                if writer is None or in_shard >= per_shard:
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
            if writer is not None:
                writer.close()
            counts[split] = {name: per_class.get(name, 0) for name in prepared.class_names}
    if prepared.store is not None:
        prepared.store.close()
    metadata = {
        "source": source,
        "class_names": prepared.class_names,
        "image_size": image_size,
        "counts": counts,
        "files": files,
        "num_examples": {split: sum(counts[split].values()) for split in SPLITS},
        "skipped": skipped,
        "fingerprint": digest.hexdigest()[:16],
        "source_fingerprint": prepared.source_fingerprint,
        "split": prepared.split,
        "format": "tfrecord: image (JPEG bytes), label (int64), source_id (bytes)",
    }
    with tf.io.gfile.GFile(_join(output_dir, METADATA_FILE), "w") as handle:
        json.dump(metadata, handle, indent=2)
    return metadata


def records_per_shard(count: int | None, image_size: int, max_workers: int = DEFAULT_MAX_WORKERS,
                      min_records: int = MIN_SHARD_RECORDS) -> int:
    """Records per shard for a split of ``count`` images: shards of about TARGET_SHARD_BYTES, but
    at least SHARDS_PER_WORKER x ``max_workers`` of them (so ``AutoShardPolicy.FILE`` can give
    every worker of a ``max_workers`` cluster its own files in balance) unless that would make
    shards smaller than ``min_records`` records. SHARD_SIZE when the count is unknown."""
    if not count:
        return SHARD_SIZE
    by_bytes = math.ceil(count * image_size**2 * JPEG_BYTES_PER_PIXEL / TARGET_SHARD_BYTES)
    shards = max(by_bytes, SHARDS_PER_WORKER * max(1, max_workers))
    shards = max(1, min(shards, count // max(1, min_records)))
    return math.ceil(count / shards)


def auto_shard_policy(metadata: dict, workers: int):
    """How fine-tuning's input is split across ``workers`` training workers (machines):
    ``AutoShardPolicy.FILE`` (each worker reads only its own shard files) when the train split
    has at least SHARDS_PER_WORKER files per worker and validation at least one, else ``DATA``
    (every worker reads everything and keeps its share of each batch: always correct, but each
    worker reads the whole data set)."""
    import tensorflow as tf

    policy = tf.data.experimental.AutoShardPolicy
    if workers <= 1:
        return policy.DATA  # one input pipeline: nothing is sharded
    train, val = (len(metadata["files"][split]) for split in ("train", "val"))
    if train >= SHARDS_PER_WORKER * workers and val >= workers:
        print(f"  input: AutoShardPolicy.FILE, {train} train and {val} val files over {workers} workers "
              "(each reads only its own files)", flush=True)
        return policy.FILE
    print(f"  input: AutoShardPolicy.DATA, {train} train and {val} val files are too few for {workers} workers "
          f"(each reads all and keeps 1/{workers}; prepare the data with max_workers >= {workers})", flush=True)
    return policy.DATA


def _encode_example(example: Example, image_size: int) -> tuple[bytes | None, str | None]:
    """(resized JPEG, None) or (None, the error that stopped it). Runs in a worker process."""
    try:
        if example.encoded is not None:
            return example.encoded, None
        if example.pixels is not None:
            pixels = example.pixels
        elif example.generate is not None:
            pixels = example.generate()
        else:
            pixels = decode_file(example.path, image_size)
        return encode_example(pixels, image_size), None
    except Exception as error:  # any decoder failure means "skip and say why"
        return None, f"{type(error).__name__}: {error}"


def _already_encoded(example: Example, store: _EncodedStore | None):
    """The result of ``_encode_example`` without any work, when the bytes are already at hand."""
    if example.encoded is not None:
        return example.encoded, None
    if example.stored is not None and store is not None:
        return store.get(example.stored), None
    return None


def _size(examples, needing_work: bool = False) -> int | None:
    if isinstance(examples, list):
        if needing_work:
            return sum(1 for e in examples if e.encoded is None and e.stored is None)
        return len(examples)
    size = getattr(examples, "size", None)
    return size() if size else None


# --- every core -----------------------------------------------------------------------------


def _processes(requested: int | None, items: int | None) -> int:
    """Worker processes to use: ``requested``, else one per usable core, or just this process
    for fewer than PARALLEL_MIN_IMAGES items (a pool's start-up would cost more than it saves)."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"processes={requested!r} must be at least 1 (1 = no worker processes).")
        return requested
    if items is not None and items < PARALLEL_MIN_IMAGES:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class _Pool:
    """Worker processes that map a function over items and hand the results back in input order.

    N processes are this one and N-1 workers, each worker with one TensorFlow thread. Workers
    are forked from this process when its TensorFlow runtime has not started yet, else from
    multiprocessing's fork server, a fresh interpreter that imports TensorFlow once and starts no
    runtime. While they start this process does the first items itself; after that it does every
    N-th chunk of items, in turn with the workers (one TensorFlow start-up fewer than N workers,
    and no core idle). The fork server is stopped when the pool closes, so nothing stays behind.
    At most ``IN_FLIGHT_PER_PROCESS`` chunks per process are queued at a time, so memory stays
    flat however many items there are. With one process everything runs here, no pool is started."""

    CHUNK = 8
    IN_FLIGHT_PER_PROCESS = 4

    def __init__(self, processes: int):
        self.processes = processes
        self._executor = None
        self._starting: list = []  # one no-op task per worker: done once that worker is ready
        self._start_method = ""  # "fork" or "forkserver" once started
        self._starter = None  # the thread that starts them from the fork server (which takes seconds)
        self._start_error: BaseException | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._starter is not None:
            self._starter.join()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
            if self._start_method == "forkserver":
                _stop_fork_server()

    def _start(self) -> None:
        """Starts the workers: forked from this process itself while its TensorFlow runtime has
        not started (they inherit the imported modules: nothing to import, no second start-up),
        else from the fork server, in a background thread while this thread keeps working."""
        import threading

        if self._start_method:
            return
        if _tensorflow_runtime_started():
            self._start_method = "forkserver"
            self._starter = threading.Thread(target=self._launch, name="data-prep-pool-start", daemon=True)
            self._starter.start()
        else:
            self._start_method = "fork"
            self._launch()  # now, before this process runs a TensorFlow op

    def _launch(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        try:
            context = multiprocessing.get_context(self._start_method)
            if self._start_method == "forkserver":
                # The fork server imports TensorFlow once (no runtime started); workers fork from it.
                context.set_forkserver_preload(["tensorflow", __name__])
            self._executor = ProcessPoolExecutor(self.processes - 1, mp_context=context, initializer=_start_worker)
            with _main_module_hidden():  # every worker is started by these submissions
                self._starting = [self._executor.submit(_ready) for _ in range(self.processes - 1)]
        except BaseException as error:  # re-raised in the calling thread by _ready_executor
            self._start_error = error

    def _started(self) -> bool:
        return (self._starter is None or not self._starter.is_alive()) and all(t.done() for t in self._starting)

    def _ready_executor(self):
        if self._starter is not None:
            self._starter.join()
        if self._start_error is not None:
            raise self._start_error
        return self._executor

    def map(self, fn: Callable, items: Iterable, ready: Callable | None = None) -> Iterator:
        """``fn(item)`` for each item, in order; ``ready(item)``, when it returns something, is
        that item's result without any work (no process is started for chunks of such items)."""
        if self.processes <= 1:
            for item in items:
                result = ready(item) if ready else None
                yield fn(item) if result is None else result
            return
        # Per chunk, in input order: its results, a call that makes them here, or a worker's future.
        pending: deque = deque()
        iterator = iter(items)
        self._start()
        while not self._started():  # workers still starting: work here
            chunk = list(itertools.islice(iterator, self.CHUNK))
            if not chunk:
                return
            for item in chunk:
                result = ready(item) if ready else None
                yield fn(item) if result is None else result

        turn = itertools.count()

        def submit() -> bool:
            chunk = list(itertools.islice(iterator, self.CHUNK))
            if not chunk:
                return False
            done = [ready(item) for item in chunk] if ready else [None]
            if all(result is not None for result in done) and ready:
                pending.append(done)
            elif next(turn) % self.processes == 0:
                pending.append(functools.partial(_run_chunk, fn, chunk))  # this process's turn
            else:
                pending.append(self._ready_executor().submit(_run_chunk, fn, chunk))
            return True

        for _ in range(self.IN_FLIGHT_PER_PROCESS * self.processes):
            if not submit():
                break
        while pending:
            head = pending.popleft()
            results = head if isinstance(head, list) else head() if callable(head) else head.result()
            submit()
            yield from results


@contextlib.contextmanager
def _main_module_hidden():
    """Spawned workers import the parent's ``__main__`` again, which reruns a script that calls
    data prep at its top level (no ``if __name__ == "__main__"`` guard) in every worker. The
    workers need nothing from it, so while they start, ``__main__`` is a blank module."""
    import sys
    import types

    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _tensorflow_runtime_started() -> bool:
    """Whether this process has run TensorFlow ops: its runtime then has thread pools and locks a
    forked child would inherit half-held. Importing TensorFlow starts no runtime (the fork server
    forks after the same import)."""
    from tensorflow.python.eager import context

    current = context.context_safe()
    return current is not None and getattr(current, "_context_handle", True) is not None


def _stop_fork_server() -> None:
    """Stops multiprocessing's fork server (it holds an imported TensorFlow, ~0.5 GB) and reaps
    it, with the CPU time and memory of the workers it forked. multiprocessing starts a new one
    when it is next needed; it has no public call for this."""
    from multiprocessing import forkserver

    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is not None:
        stop()


def _ready() -> None:
    """A no-op: it returns once its worker has started (the initializer has run)."""


def _run_chunk(fn: Callable, items: list) -> list:
    return [fn(item) for item in items]


def _start_worker() -> None:
    """One TensorFlow thread per worker process: the pool, not TensorFlow, spreads the work."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


class _Progress:
    """Prints ``data prep: <what> N/M <noun> <verb> (rate on P processes)`` every 500 items and at the end."""

    EVERY = 500

    def __init__(self, what: str, noun: str, total: int | None, processes: int, verb: str = ""):
        self.what, self.noun, self.total, self.processes, self.verb = what, noun, total, processes, verb
        self.count, self.started = 0, time.monotonic()

    def tick(self) -> None:
        self.count += 1
        if self.count % self.EVERY == 0 or self.count == self.total:
            rate = self.count / max(time.monotonic() - self.started, 1e-9)
            of = f"/{self.total}" if self.total else ""
            workers = f"{self.processes} processes" if self.processes > 1 else "1 process"
            verb = f" {self.verb}" if self.verb else ""
            line = f"{self.what} {self.count}{of} {self.noun}{verb} ({rate:.0f}/s on {workers})"
            print(f"  data prep: {line}", flush=True)


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
    # deterministic: features in key order. Without it the map order (and so the file bytes) changes from
    # one process to the next.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


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
    source_fingerprint: str = "",
    processes: int | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    min_shard_records: int = MIN_SHARD_RECORDS,
) -> dict:
    """The data-prep step: parse the spec, load, split 80/10/10, resize, write. Returns metadata
    (``source_fingerprint``, the data-fingerprint step's, is recorded in it).

    ``processes``: worker processes for decoding, resizing and encoding (default: every core,
    for 200 images or more); the output does not depend on it. ``max_workers``: the largest
    number of training workers (machines) the shards should serve with ``AutoShardPolicy.FILE``.

    Fails (ConfigError) when more than ``max_skipped_fraction`` of the image files could not be
    read, or when a class has no image left for some split."""

    spec = parse_data_spec(data)
    if not (isinstance(image_size, int) and image_size >= MIN_IMAGE_SIZE):
        raise ConfigError(f"--image-size {image_size!r} must be a whole number of at least {MIN_IMAGE_SIZE}.")
    if not (isinstance(max_workers, int) and max_workers >= 1):
        raise ConfigError(f"max_workers {max_workers!r} must be a whole number of at least 1 (training machines).")
    prepared = load_examples(spec, seed, image_size, tfds_data_dir, processes)
    print(f"  data prep: {spec} -> {len(prepared.class_names)} classes {prepared.class_names}", flush=True)
    if not 0.0 <= max_skipped_fraction <= 1.0:
        raise ConfigError(f"--max-skipped-fraction {max_skipped_fraction!r} must lie between 0 and 1 (default 0.1).")
    prepared.source_fingerprint = source_fingerprint
    metadata = write_prepared(prepared, output_dir, image_size, str(spec), processes=processes,
                              max_workers=max_workers, min_shard_records=min_shard_records)
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
