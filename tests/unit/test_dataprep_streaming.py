"""Data prep at scale: the same split as before the listing went to a file and image bytes to disk."""

import hashlib
import json
import os
import shutil

from tlp.components.lib.dataprep import prepare, records

# The assignment tlp wrote for _fixed_folder() (seed 7, 4-record shards, 2 workers) before the
# listing went to a file and the bytes to disk: sha256 of "split/shard: source ids in order" lines.
# Recorded by running this test on main at 3bbb852, and again on the dedupe branch at 18543c5 (the same).
GOLDEN_ASSIGNMENT = "54b1d702aa57e8d81fb7aa2645443bba29b0779fd3347ee0f0db98bff33e50cb"


def _fixed_folder(root):
    """Files whose bytes do not depend on any encoder's version (BMP: a header and raw pixels), three
    classes, exact duplicates, an unreadable file and a file that is no image. (No labelling conflict:
the dedupe branch changed what one means, on purpose.)"""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(2026)
    for label, name in enumerate(("ant", "bee", "wasp")):
        os.makedirs(root / name)
        for i in range(40 if name != "wasp" else 9):
            pixels = rng.integers(0, 256, (10 + i % 4, 12 + label, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{i:03d}.bmp", format="BMP")
    for i in range(3):
        shutil.copy(root / "ant" / f"{i:03d}.bmp", root / "ant" / f"copy-{i}.bmp")
    (root / "bee" / "broken.bmp").write_bytes(b"BM not really")
    (root / "wasp" / "notes.txt").write_text("not a photo")
    return root


def _assignment(dataset, root) -> list[str]:
    metadata = json.loads((dataset / records.METADATA_FILE).read_text())
    lines = []
    for split in records.SPLITS:
        for index, name in enumerate(metadata["files"][split]):
            ids = [os.path.relpath(source_id, root) for source_id in _source_ids(dataset / name)]
            lines.append(f"{split}/{index}: {' '.join(ids)}")
    return lines


def _source_ids(path) -> list[str]:
    """The source ids of a shard's records, read without TensorFlow (protobuf's Example)."""
    import struct

    from tensorflow.core.example import example_pb2

    data, ids, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        example = example_pb2.Example.FromString(data[at + 12 : at + 12 + length])
        ids.append(example.features.feature["source_id"].bytes_list.value[0].decode())
        at += 12 + length + 4
    return ids


def test_the_split_and_shards_are_those_of_before_on_a_fixed_folder(tmp_path):
    root = _fixed_folder(tmp_path / "photos")
    metadata = prepare.prepare_dataset(f"folder:{root}", str(tmp_path / "out"), image_size=32, seed=7,
                                       processes=0, max_workers=2, min_shard_records=4)
    lines = _assignment(tmp_path / "out", root)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "photos"]  # the scratch folder is gone
    assert len(lines) > 6  # several shards per split
    assert sorted(s["kind"] for s in metadata["skipped"]) == ["duplicate"] * 3 + ["not_image", "unreadable"]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert digest == GOLDEN_ASSIGNMENT, f"{digest}:\n" + "\n".join(lines)


def _gathered(n: int) -> list[tuple]:
    """What the split stage gathers for n kept photos of two classes: ((order, source_id, label,
    digest, fixed split), (offset, length))."""
    return [(((i // 50, i % 50), f"/data/photos/{('squares', 'circles')[i % 2]}/{i:06d}.jpg", i % 2,
              hashlib.sha256(str(i).encode()).hexdigest(), None), (i * 5000, 5000)) for i in range(n)]


def test_the_read_stage_sends_each_photo_compactly(tmp_path):
    """Each photo the read stage sends to the content grouping is held, encoded, by Beam's local
    runner until the grouping is done: a plain tuple (184 bytes here), not a pickled Photo (388)."""
    import numpy as np
    from apache_beam.coders.coders import FastPrimitivesCoder
    from PIL import Image

    from tlp.components.lib.dataprep import pipeline

    files = []
    for i in range(3):
        path = tmp_path / f"photo-{i}.jpg"
        Image.fromarray(np.full((40, 50, 3), i * 40, np.uint8)).save(path)
        files.append((str(path), i % 2))
    sent = pipeline._read((0, ("files", files)), 64, None, str(tmp_path))
    sizes = [len(FastPrimitivesCoder().encode(element)) for element in sent]
    assert len(sizes) == 3 and max(sizes) < 250, sizes


def test_the_split_stage_holds_little_beyond_what_it_gathered():
    """The one worker that splits holds every kept photo: beyond the gathered list, at most 320
    bytes a photo at its peak (the Example, index and place dicts of before took 379)."""
    import tracemalloc

    import apache_beam  # noqa: F401  (imported before measuring)

    from tlp.components.lib.dataprep import pipeline

    gathered = _gathered(4000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        shards = sum(1 for _ in pipeline._assign_shards(gathered, 42, False, 160, 2, 100, None))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert shards == 4001  # every photo, and the plan
    assert peak / 4000 < 320, f"{peak / 4000:.0f} bytes a photo"


def test_the_split_stage_splits_as_split_by_content():
    """The split stage's compact photos give split_by_content's very split, balancing moves included."""
    from tlp.components.lib.dataprep import pipeline, split

    gathered = _gathered(1300)
    plan = pipeline.plan_splits(gathered, 0, False, 160, 2, 100)
    examples = [split.Example(source_id, label, digest) for (_, source_id, label, digest, _), _ in gathered]
    expected, record = split.split_by_content(examples, 0)
    assert plan["record"] == record and record["moved"]
    assert {name: [photo.source_id for photo in plan["ordered"][name]] for name in split.SPLITS} == \
        {name: [example.source_id for example in expected[name]] for name in split.SPLITS}
