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


def _photo_fields(n: int) -> list[tuple]:
    """(source_id, label, file digest) of n photos of two classes."""
    return [(f"/data/photos/{('squares', 'circles')[i % 2]}/{i:06d}.jpg", i % 2,
             hashlib.sha256(str(i).encode()).hexdigest()) for i in range(n)]


def _gathered(n: int, scratch, seed: int) -> list[bytes]:
    """What the split stage gathers for n kept photos of two classes: each a kept record, its JPEG
    (ten bytes here) and name staged under ``scratch`` as the read stage stages them."""
    from tlp.components.lib.dataprep import pipeline, split

    gathered, fields = [], _photo_fields(n)
    for start in range(0, n, 50):
        staged, offset = bytearray(), 0
        for i, (source_id, label, digest) in enumerate(fields[start : start + 50]):
            name = source_id.encode()
            position = split.split_position(digest, seed)
            gathered.append(pipeline._KEPT.pack(start // 50, i, label, offset, 10, len(name), position, 0))
            staged += b"0123456789" + name
            offset += 10 + len(name)
        path = pipeline.staged_path(str(scratch), start // 50)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(staged)
    return gathered


def _read_photos(n: int) -> list:
    """n photos as the read stage leaves them (staged, digested), with paths of a photo folder."""
    from tlp.components.lib.dataprep.sources import Photo

    return [Photo(order=(i // 16, i % 16), source_id=f"/data/photos/{('circles', 'squares')[i % 2]}/IMG_{i:05d}.jpg",
                  label=i % 2, digest=hashlib.sha256(b"file %d" % i).hexdigest(),
                  prepared_digest=hashlib.sha256(b"pixels %d" % i).hexdigest(), stored=(i * 3000, 3000))
            for i in range(n)]


def test_a_photo_record_packs_and_unpacks_every_field():
    from tlp.components.lib.dataprep import pipeline

    digest = hashlib.sha256(b"x").hexdigest()
    prepared = hashlib.sha256(b"y").hexdigest()
    for fields in (((3, 15), "/p/cat/é 1.jpg", 2, digest, None, None, (123456789012, 4567), prepared),
                   ((0, 0), "tfds/cats/7", 1, None, None, "val", (0, 10), None),
                   ((70000, 9), "/p/dog/broken.jpg", 0, digest, "cannot identify image file", None, None, None),
                   ((1, 2), "/p/dog/empty.jpg", 0, None, "", None, None, None)):
        assert pipeline.unpack(pipeline.pack(*fields)) == fields


def test_a_staged_photo_record_leaves_its_name_on_disk(tmp_path):
    """A folder photo's record does not carry its name: the name is staged after its JPEG and read
    back only when asked for (a group of copies, the shards)."""
    from tlp.components.lib.dataprep import pipeline

    name, digest = "/data/photos/cats/a photo é.jpg", hashlib.sha256(b"x").hexdigest()
    path = pipeline.staged_path(str(tmp_path), 4)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as handle:
        handle.write(b"other" + b"JPEG" + name.encode())
    fields = ((4, 1), name, 1, digest, None, None, (5, 4), digest)
    raw = pipeline.pack(*fields, name_staged=True)
    assert len(raw) == len(pipeline.pack(*fields)) - len(name.encode())
    assert pipeline.unpack(raw)[pipeline.SOURCE_ID] is None
    assert pipeline.unpack(raw, str(tmp_path)) == fields


def test_the_launcher_holds_each_photo_of_the_content_grouping_in_few_bytes():
    """Beam's local runner decodes every element it groups and holds them all in the launcher until
    the grouping is done (its GroupingBuffer): a photo there takes at most 250 bytes (the 7-tuples of
    before took 663, each keyed by its own digest)."""
    import tracemalloc

    from apache_beam.coders import coders
    from apache_beam.runners.portability.fn_api_runner.execution import GroupingBuffer
    from apache_beam.transforms import core, window

    from tlp.components.lib.dataprep import pipeline

    n = 4000
    pair = coders.TupleCoder([coders.FastPrimitivesCoder(), coders.FastPrimitivesCoder()])
    sent = coders.WindowedValueCoder(pair, coders.GlobalWindowCoder()).get_impl()
    grouped = coders.WindowedValueCoder(coders.TupleCoder([coders.FastPrimitivesCoder(), coders.IterableCoder(
        coders.FastPrimitivesCoder())]), coders.GlobalWindowCoder())
    elements = [sent.encode_nested(window.GlobalWindows.windowed_value((pipeline._key_by_content(photo),
                                                                          pipeline._compact(photo))))
                for photo in _read_photos(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        buffer = GroupingBuffer(coders.WindowedValueCoder(pair, coders.GlobalWindowCoder()), grouped,
                                core.Windowing(window.GlobalWindows()))
        for element in elements:
            buffer.append(element)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held / n < 250, f"{held / n:.0f} bytes a photo"


def test_no_stage_passes_the_photos_on_as_a_side_input(tmp_path):
    """A side input is held whole by the runner and sent whole to every worker that reads it: only
    the metadata writer reads side inputs (shard digests, skipped files, the plan) and ToList of
    the shards and of the skipped files, never the list of every kept photo (ToList made one)."""
    import apache_beam as beam

    from tlp.components.lib.dataprep import pipeline, sources

    sources.write_listing(sources.Listing("folder:x", ["a", "b"], [], 0), str(tmp_path))
    pipe = beam.Pipeline()
    pipeline.build(pipe, str(tmp_path), str(tmp_path / "out"), image_size=64, seed=1, max_workers=2,
                   min_shard_records=4)
    reading = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            if node.side_inputs:
                reading[node.full_label] = len(node.side_inputs)

    pipe.visit(Visitor())
    assert sorted(reading) == ["GatherShards/GatherShards/InjectDefault",
                               "GatherSkipped/GatherSkipped/InjectDefault", "WriteMetadata"], reading


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


def test_the_split_stage_holds_at_most_300_bytes_a_photo(tmp_path):
    """The one worker that splits holds every kept photo: at its peak, the gathered records included,
    at most 300 bytes a photo (the gathered tuples and Kept tuples of before took 736)."""
    import tracemalloc

    import apache_beam  # noqa: F401  (imported before measuring)

    from tlp.components.lib.dataprep import pipeline

    staged = _gathered(4000, tmp_path, 42)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        gathered = [bytes(bytearray(raw)) for raw in staged]  # new objects, as the worker decodes the grouping
        shards = sum(1 for _ in pipeline._assign_shards((b"", gathered), str(tmp_path), 42, False, 160, 2, 100,
                                                        None))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert shards == 4001  # every photo, and the plan
    assert peak / 4000 < 300, f"{peak / 4000:.0f} bytes a photo"


def test_the_split_stage_splits_as_split_by_content(tmp_path):
    """The split stage's compact photos give split_by_content's very split, balancing moves included."""
    from tlp.components.lib.dataprep import pipeline, split

    plan = pipeline.plan_splits(_gathered(1300, tmp_path, 0), str(tmp_path), 0, False, 160, 2, 100)
    examples = [split.Example(source_id, label, digest) for source_id, label, digest in _photo_fields(1300)]
    expected, record = split.split_by_content(examples, 0)
    assert plan["record"] == record and record["moved"]
    assert {name: [photo.source_id for photo in plan["ordered"][name]] for name in split.SPLITS} == \
        {name: [example.source_id for example in expected[name]] for name in split.SPLITS}


def test_the_launcher_lets_go_of_the_listing_once_written(tmp_path):
    """The workers read the listing's units from the scratch folder: the launching process does not
    hold a path and a tuple a photo for the whole run."""
    from tlp.components.lib.dataprep import sources

    listing = sources.list_sample(6, seed=3)
    prepare.run_pipeline(listing, str(tmp_path / "out"), image_size=32, seed=3, max_workers=1,
                         min_shard_records=4, processes=0)
    assert listing.units == []
    assert sum(json.loads((tmp_path / "out" / records.METADATA_FILE).read_text())["num_examples"].values()) == 12
