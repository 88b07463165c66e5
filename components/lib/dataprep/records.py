"""The prepared data set on disk: TFRecord shards per split and ``metadata.json``; writing them
(without TensorFlow, so Beam's workers never import it) and reading them back (tf.data).

A record is a ``tf.train.Example`` with three features: ``image`` (JPEG bytes), ``label``
(int64), ``source_id`` (bytes). Reading is a streaming tf.data pipeline, so memory stays flat
however many images there are. Shards are many and small enough for ``AutoShardPolicy.FILE``
(see ``records_per_shard`` and ``auto_shard_policy``).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections import Counter
from collections.abc import Iterable

from tlp.components.lib.dataprep.sources import join
from tlp.components.lib.dataprep.split import SPLITS
from tlp.components.lib.specs import ConfigError

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
SHUFFLE_BUFFER = 4096  # training-stream shuffle; the cut cache (cut_cache.py) shuffles record positions the same way
RECORD_FORMAT = "tfrecord: image (JPEG bytes), label (int64), source_id (bytes)"


# --- writing, without TensorFlow ------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def serialize_example(encoded: bytes, label: int, source_id: str) -> bytes:
    """The bytes of ``tf.train.Example(image, label, source_id).SerializeToString(deterministic=True)``,
    written by hand (map entries in key order, the int64 list packed): a worker needs no
    TensorFlow, and tests/unit/test_images.py checks the bytes against TensorFlow's."""
    if label < 0:
        raise ConfigError(f"label {label} must not be negative; class labels count from 0")
    bytes_feature = lambda value: _field(1, _field(1, value))  # noqa: E731 - Feature.bytes_list.value
    features = {
        "image": bytes_feature(encoded),
        "label": _field(3, _field(1, _varint(label))),  # Feature.int64_list, packed value
        "source_id": bytes_feature(source_id.encode()),
    }
    entries = b"".join(_field(1, _field(1, key.encode()) + _field(2, value)) for key, value in sorted(features.items()))
    return _field(1, entries)


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(record: bytes) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record))


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.tfrecord"


def write_shard(path: str, records: Iterable[tuple[bytes, int, str]]) -> str:
    """Writes (encoded, label, source_id) records to one TFRecord file (local or gs://, through
    Beam's file systems), taking them one at a time from any iterable; returns the SHA-256 of the
    images in it, in order."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    digest = hashlib.sha256()
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for encoded, label, source_id in records:
            handle.write(tfrecord_frame(serialize_example(encoded, label, source_id)))
            digest.update(encoded)
    return digest.hexdigest()


def fingerprint(shard_digests: list[str]) -> str:
    """The data set's fingerprint: its images, in split, shard and record order."""
    return hashlib.sha256("".join(shard_digests).encode()).hexdigest()[:16]


def write_metadata(output_dir: str, metadata: dict) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(join(output_dir, METADATA_FILE), mime_type="application/json") as handle:
        handle.write(json.dumps(metadata, indent=2).encode())


def write_splits(output_dir: str, class_names: list[str], splits: dict[str, list[tuple[bytes, int, str]]],
                 image_size: int, source: str, *, max_workers: int = DEFAULT_MAX_WORKERS,
                 min_shard_records: int = MIN_SHARD_RECORDS, split_record: dict | None = None) -> dict:
    """Writes already encoded (encoded, label, source_id) records per split, in one process, as
    the pipeline's write stage shards them; returns the metadata (e.g. data sets of exact split
    sizes for the benchmarks)."""
    import os

    if "://" not in output_dir:
        os.makedirs(output_dir, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    files: dict[str, list[str]] = {}
    digests: list[str] = []
    for split in SPLITS:
        members = splits.get(split, [])
        per_shard = records_per_shard(len(members), image_size, max_workers, min_shard_records)
        files[split] = []
        for index, start in enumerate(range(0, len(members), per_shard)):
            files[split].append(shard_name(split, index))
            digests.append(write_shard(join(output_dir, files[split][-1]), members[start : start + per_shard]))
        per_class = Counter(label for _, label, _ in members)
        counts[split] = {name: per_class.get(label, 0) for label, name in enumerate(class_names)}
    metadata = metadata_record(source, class_names, image_size, counts, files, [], fingerprint(digests),
                               split_record or {})
    write_metadata(output_dir, metadata)
    return metadata


def metadata_record(source: str, class_names: list[str], image_size: int, counts: dict, files: dict,
                    skipped: list[dict], data_fingerprint: str, split_record: dict,
                    source_fingerprint: str = "") -> dict:
    return {
        "source": source,
        "class_names": class_names,
        "image_size": image_size,
        "counts": counts,
        "files": files,
        "num_examples": {split: sum(counts[split].values()) for split in SPLITS},
        "skipped": skipped,
        "fingerprint": data_fingerprint,
        "source_fingerprint": source_fingerprint,
        "split": split_record,
        "format": RECORD_FORMAT,
    }


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


# --- reading, with TensorFlow -------------------------------------------------------------


def read_metadata(dataset_dir: str) -> dict:
    import tensorflow as tf

    path = join(dataset_dir, METADATA_FILE)
    if not tf.io.gfile.exists(path):
        raise ConfigError(
            f"{dataset_dir} holds no {METADATA_FILE}; pass the Dataset output of the data-prep "
            "component (tlp component data-prep writes one)."
        )
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def _at_positions(dataset, positions):
    """The records of ``dataset`` at ``positions`` (sorted, distinct): a skipped record costs its
    read, not its JPEG decoding."""
    import numpy as np
    import tensorflow as tf

    positions = np.asarray(positions, dtype=np.int64)
    if not len(positions):
        raise ConfigError("read_split got an empty list of positions; ask for at least one record.")
    wanted = np.zeros(int(positions[-1]) + 1, dtype=bool)
    wanted[positions] = True
    mask = tf.constant(wanted)
    return (dataset.take(len(wanted)).enumerate()
            .filter(lambda index, record: tf.gather(mask, index))
            .map(lambda index, record: record))


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
    positions=None,
    every: tuple[int, int] = (0, 1),
):
    """A tf.data pipeline over one split: (uint8 image, label) or (image, label, source_id).

    ``cache_decoded`` keeps the decoded images in memory after the first pass, so later epochs
    spend no CPU on JPEG decoding (on a CPU-only machine that CPU is taken from training).
    ``worker`` = (index, count) reads only that worker's shard files, the ones
    ``AutoShardPolicy.FILE`` gives it (every count-th file from the index-th).
    ``positions``: only the records at these 0-based positions (in shard and record order, sorted,
    without repeats) are decoded; the others are skipped as raw bytes, and reading stops after the
    last one. ``every`` = (index, count) then keeps every count-th of the remaining records from
    the index-th, before decoding: the p-th goes to ``p % count`` (how a model pass divides the
    photos)."""
    import tensorflow as tf

    metadata = read_metadata(dataset_dir)
    image_size = metadata["image_size"]
    paths = [join(dataset_dir, name) for name in metadata["files"][split]][worker[0] :: worker[1]]
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
    if positions is not None:
        if worker != (0, 1):
            raise ConfigError("read_split takes positions or a worker's share, not both")
        dataset = _at_positions(dataset, positions)
    if every[1] > 1:
        dataset = dataset.shard(every[1], every[0])
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


def read_stored_images(dataset_dir: str, split: str):
    """(stored JPEG bytes, source id) of each photo of one split, in ``read_split``'s order: the photo
    as data prep stored it, e.g. for its content id (``drift.content_id``)."""
    import tensorflow as tf

    metadata = read_metadata(dataset_dir)
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "source_id": tf.io.FixedLenFeature([], tf.string)}
    paths = [join(dataset_dir, name) for name in metadata["files"][split]]
    for record in tf.data.TFRecordDataset(paths):
        parsed = tf.io.parse_single_example(record, spec)
        yield parsed["image"].numpy(), parsed["source_id"].numpy().decode()
