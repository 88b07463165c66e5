"""Data prep on every core, and shards that let each training worker read only its own files."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_image
from tlp.components.lib.dataprep import encode, prepare, records, sources
from tlp.components.lib.dataprep import split as content_split


def _digests(directory) -> dict:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
            for name in sorted(os.listdir(directory))}


def _photos(root, per_class=14):
    for index, name in enumerate(("cat", "dog")):
        for i in range(per_class):
            size = (40 + 7 * i, 30 + 5 * i)
            write_image(str(root / name / f"{i:02d}.jpg"), size=size, color=(index * 200, 80, i * 15))
    write_image(str(root / "dog" / "small.png"), mode="RGBA", fmt="PNG")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    shutil.copy(root / "cat" / "03.jpg", root / "cat" / "copy-of-03.jpg")  # a duplicate
    shutil.copy(root / "cat" / "04.jpg", root / "dog" / "cat-04.jpg")  # a labelling conflict
    return root


def _shards(directory) -> dict:
    return {name: digest for name, digest in _digests(directory).items() if name.endswith(".tfrecord")}


@pytest.mark.slow  # its own processes load TensorFlow or Beam: make test runs it, make test-fast does not
@pytest.mark.parametrize("data", ["folder", "sample:24"])
def test_beam_on_two_worker_processes_writes_the_bytes_one_process_writes(tmp_path, data):
    spec = f"folder:{_photos(tmp_path / 'photos')}" if data == "folder" else data
    one = prepare.prepare_dataset(spec, str(tmp_path / "one"), image_size=32, seed=3, processes=0)
    two = prepare.prepare_dataset(spec, str(tmp_path / "two"), image_size=32, seed=3, processes=2,
                                  min_shard_records=4)
    again = prepare.prepare_dataset(spec, str(tmp_path / "again"), image_size=32, seed=3, processes=0,
                                    min_shard_records=4)
    assert _shards(tmp_path / "two") == _shards(tmp_path / "again")  # the runner and its workers: no say
    assert len(_shards(tmp_path / "two")) > 3  # several shards per split were written by the workers
    for key in ("counts", "skipped", "split", "num_examples"):
        assert one[key] == two[key] == again[key], key
    assert two["fingerprint"] == again["fingerprint"]  # over the shards' images in order
    if data == "folder":
        kinds = sorted(s["kind"] for s in one["skipped"])
        assert kinds == ["conflict", "conflict", "duplicate", "unreadable"]


def _reference_split(root: str, seed: int) -> dict:
    """tlp 0.1.0's decisions in one process, without Beam: files in listing order, the first of
    readable files kept, then ``split_by_content`` on what was kept (each by its file's SHA-256).
    Since issue 28, files are the same photo when their prepared (resized) pixels are identical,
    and a picture filed under two classes is left out altogether (tlp 0.1.0 kept its first class)."""
    listing = sources.list_folder(root)
    readable = []
    for unit in listing.units:
        for path, label in unit[1]:
            data = open(path, "rb").read()
            try:
                prepared = encode.prepare_with_digest(data, 32)[1]
            except Exception:
                continue
            readable.append((path, label, hashlib.sha256(data).hexdigest(), prepared))
    classes: dict[str, set] = {}
    for _, label, _, prepared in readable:
        classes.setdefault(prepared, set()).add(label)
    kept, seen = [], set()
    for path, label, digest, prepared in readable:
        if prepared not in seen and len(classes[prepared]) == 1:
            seen.add(prepared)
            kept.append(content_split.Example(path, label, digest))
    splits, _ = content_split.split_by_content(kept, seed)
    return {name: [e.source_id for e in splits[name]] for name in records.SPLITS}


def test_the_beam_split_is_tlp_0_1_0_split_on_hundreds_of_photos_with_duplicates_and_conflicts(tmp_path):
    import random

    root = tmp_path / "photos"
    rng = random.Random(5)
    for index, name in enumerate(("cat", "dog", "fox")):
        for i in range(150 if name != "fox" else 12):  # a small class: its val/test are filled
            write_image(str(root / name / f"{i:03d}.jpg"), size=(20 + i % 7, 16 + i % 5),
                        color=(index * 90, rng.randrange(256), i % 256))
    for i in range(20):  # duplicates in the same class, and the same photo under another class
        shutil.copy(root / "cat" / f"{i:03d}.jpg", root / "cat" / f"dup-{i:03d}.jpg")
        shutil.copy(root / "dog" / f"{i:03d}.jpg", root / "cat" / f"conflict-{i:03d}.jpg")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    metadata = prepare.prepare_dataset(f"folder:{root}", str(tmp_path / "out"), image_size=32, seed=11,
                                       processes=2)
    written = {}
    for name in records.SPLITS:
        written[name] = [s.decode() for _, _, ids in records.read_split(str(tmp_path / "out"), name, 64,
                                                                         with_source_ids=True)
                         for s in ids.numpy()]
    assert written == _reference_split(str(root), 11)  # the same photos, in the same order
    kinds = [s["kind"] for s in metadata["skipped"]]
    # 20 copies, and 2 solid-colour JPEGs whose colours (1-2 levels apart) decode to the same pixels
    assert kinds.count("duplicate") == 22 and kinds.count("unreadable") == 1
    conflicts = {s["path"]: s["conflicts_with"] for s in metadata["skipped"] if s["kind"] == "conflict"}
    # Both copies of each picture filed under cat/ and dog/ are left out, each listed with the other.
    assert len(conflicts) == 40
    for i in range(20):
        dog, cat = str(root / "dog" / f"{i:03d}.jpg"), str(root / "cat" / f"conflict-{i:03d}.jpg")
        assert conflicts[dog] == [cat] and conflicts[cat] == [dog]
    assert metadata["counts"]["test"]["fox"] >= 1 and metadata["counts"]["val"]["fox"] >= 1


@pytest.mark.slow  # its own processes load TensorFlow or Beam: make test runs it, make test-fast does not
def test_beam_workers_do_not_import_tensorflow(tmp_path):
    """Each worker would pay TensorFlow's import (about 3 s, 0.5 GB) for nothing."""
    code = ("import sys\nfrom tlp.components.lib.dataprep import prepare\n"
            f"prepare.prepare_dataset('sample:10', {str(tmp_path / 'out')!r}, image_size=32, seed=1, processes=1)\n"
            "assert 'tensorflow' not in sys.modules, 'the launcher imported TensorFlow'\n")
    probe = tmp_path / "probe.py"
    probe.write_text(code)
    # The workers run the same modules; a module-level TensorFlow import would show here too.
    result = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for module in ("pipeline", "encode", "records", "sources", "split"):
        source = (Path(prepare.__file__).parent / f"{module}.py").read_text()
        assert "\nimport tensorflow" not in source and "\nfrom tensorflow" not in source, module


def test_the_hand_made_pool_is_gone():
    from tlp.components.lib import dataprep

    names = {name for module in Path(dataprep.__file__).parent.glob("*.py") for name in [module.read_text()]}
    assert not any("_Pool" in text or "forkserver" in text for text in names)


def test_shard_sizes():
    # Small sets: shards of at least 16 records, so few files (and DATA sharding).
    assert records.records_per_shard(64, 160) == 16
    assert records.records_per_shard(10, 160) == 10
    # Mid-size sets: 4 shards per worker of an 8-worker cluster.
    assert records.records_per_shard(1600, 160) == 50
    assert records.records_per_shard(18_600, 160) == 582
    # Big sets: about 128 MB per shard (~13 KB per 160 px image).
    per_shard = records.records_per_shard(1_000_000, 160)
    assert 100e6 < per_shard * 160**2 * records.JPEG_BYTES_PER_PIXEL < 200e6
    assert records.records_per_shard(None, 160) == records.SHARD_SIZE  # length unknown in advance
    assert records.records_per_shard(64, 64, max_workers=2, min_records=4) == 8


def test_auto_shard_policy_is_file_only_when_every_worker_gets_its_own_files(capsys):
    import tensorflow as tf

    policy = tf.data.experimental.AutoShardPolicy

    def metadata(train, val):
        return {"files": {"train": [f"t{i}" for i in range(train)], "val": [f"v{i}" for i in range(val)]}}

    assert records.auto_shard_policy(metadata(32, 4), 2) == policy.FILE
    assert records.auto_shard_policy(metadata(32, 4), 8) == policy.DATA  # too few validation files
    assert records.auto_shard_policy(metadata(7, 4), 2) == policy.DATA  # fewer than 4 files per worker
    assert records.auto_shard_policy(metadata(1, 1), 1) == policy.DATA  # one worker: nothing to shard
    assert "too few for 8 workers" in capsys.readouterr().out
