"""Data prep on every core, and shards that let each training worker read only its own files."""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import write_image
from tlp.components.lib import images


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


@pytest.mark.parametrize("data", ["folder", "sample:24"])
def test_parallel_data_prep_writes_the_bytes_one_process_writes(tmp_path, data, capsys):
    spec = f"folder:{_photos(tmp_path / 'photos')}" if data == "folder" else data
    outputs = {}
    for processes in (1, 2):
        out = tmp_path / f"out-{processes}"
        images.prepare_dataset(spec, str(out), image_size=48, seed=5, processes=processes, max_workers=2,
                               min_shard_records=4)
        outputs[processes] = _digests(out)
    assert outputs[1] == outputs[2]  # every shard and metadata.json, byte for byte
    assert sum(name.startswith("train-") for name in outputs[1]) > 1
    printed = capsys.readouterr().out
    assert "on 2 processes" in printed and "on 1 process)" in printed  # progress, with the process count
    if data == "folder":
        metadata = images.read_metadata(str(tmp_path / "out-2"))
        kinds = sorted(s["kind"] for s in metadata["skipped"])
        assert kinds == ["duplicate", "duplicate", "unreadable"]
        assert sum(metadata["num_examples"].values()) == 29  # 28 JPEGs and a PNG; a copy and a conflict kept once


def test_workers_forked_from_a_fresh_process_write_the_same_bytes(tmp_path):
    """In a process that has run no TensorFlow op (a component's), the workers are forked from it
    directly instead of from the fork server; the shards are still those of one process."""
    photos = _photos(tmp_path / "photos")
    code = ("import sys\nfrom tlp.components.lib import images\n"
            "assert not images._tensorflow_runtime_started()\n"
            "images.prepare_dataset(sys.argv[1], sys.argv[2], image_size=48, seed=5, processes=2, max_workers=2,"
            " min_shard_records=4)\n")
    run = subprocess.run([sys.executable, "-c", code, f"folder:{photos}", str(tmp_path / "forked")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "on 2 processes" in run.stdout
    images.prepare_dataset(f"folder:{photos}", str(tmp_path / "one"), image_size=48, seed=5, processes=1,
                           max_workers=2, min_shard_records=4)
    assert _digests(tmp_path / "forked") == _digests(tmp_path / "one")


def test_shards_are_the_same_bytes_in_every_process(tmp_path):
    """Serialized records do not depend on the process (protobuf map order is made deterministic)."""
    code = ("import sys\nfrom tlp.components.lib import images\n"
            "images.prepare_dataset('sample:10', sys.argv[1], image_size=32, seed=1)\n")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True, capture_output=True)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_a_script_without_a_main_guard_can_prepare_data_on_every_core(tmp_path):
    """Spawned workers do not rerun the calling script (it has no ``if __name__ == "__main__"``)."""
    script = tmp_path / "prep.py"
    script.write_text("import sys\nfrom tlp.components.lib import images\nprint('RAN')\n"
                      "images.prepare_dataset('sample:10', sys.argv[1], image_size=32, processes=2)\n")
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("RAN") == 1 and "on 2 processes" in run.stdout


def test_folder_images_wait_on_disk_not_in_memory(tmp_path):
    prepared = images.folder_examples(str(_photos(tmp_path / "photos", per_class=6)), seed=1, image_size=32,
                                      processes=1)
    kept = [e for split in images.SPLITS for e in prepared.splits[split]]
    assert kept and all(e.encoded is None and e.stored is not None for e in kept)
    assert prepared.store.get(kept[0].stored)[:2] == b"\xff\xd8"  # a JPEG
    prepared.store.close()


def test_shard_sizes():
    # Small sets: shards of at least 16 records, so few files (and DATA sharding).
    assert images.records_per_shard(64, 160) == 16
    assert images.records_per_shard(10, 160) == 10
    # Mid-size sets: 4 shards per worker of an 8-worker cluster.
    assert images.records_per_shard(1600, 160) == 50
    assert images.records_per_shard(18_600, 160) == 582
    # Big sets: about 128 MB per shard (~13 KB per 160 px image).
    per_shard = images.records_per_shard(1_000_000, 160)
    assert 100e6 < per_shard * 160**2 * images.JPEG_BYTES_PER_PIXEL < 200e6
    assert images.records_per_shard(None, 160) == images.SHARD_SIZE  # length unknown in advance
    assert images.records_per_shard(64, 64, max_workers=2, min_records=4) == 8


def test_auto_shard_policy_is_file_only_when_every_worker_gets_its_own_files(capsys):
    import tensorflow as tf

    policy = tf.data.experimental.AutoShardPolicy

    def metadata(train, val):
        return {"files": {"train": [f"t{i}" for i in range(train)], "val": [f"v{i}" for i in range(val)]}}

    assert images.auto_shard_policy(metadata(32, 4), 2) == policy.FILE
    assert images.auto_shard_policy(metadata(32, 4), 8) == policy.DATA  # too few validation files
    assert images.auto_shard_policy(metadata(7, 4), 2) == policy.DATA  # fewer than 4 files per worker
    assert images.auto_shard_policy(metadata(1, 1), 1) == policy.DATA  # one worker: nothing to shard
    assert "too few for 8 workers" in capsys.readouterr().out
