"""Deduplication on the prepared image (issue 28, point 2): the same picture saved again with other
bytes (another PNG compression level, metadata stripped) is one photo, in one split; a picture
filed under two classes is a labelling conflict, left out of training and listed with both paths."""

import os

import numpy as np
from PIL import Image

from tlp.components.lib.dataprep import prepare, records

SIZE = 32
SEED = 7
PER_CLASS = 30
RESAVED = 12  # per class: about a third of such pairs straddled two splits before
# The counts of the fixed folder (no copies) as tlp 0.1.0 split them, measured on the code before
# deduplication looked at the prepared image: photos that are not copies must stay where they were.
COUNTS_BEFORE = {"train": {"cat": 23, "dog": 17}, "val": {"cat": 4, "dog": 8}, "test": {"cat": 3, "dog": 5}}


def _save_original(path, seed: int) -> None:
    """A noise PNG (distinct per seed) with EXIF metadata, as a camera or an editor writes it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif[0x0132] = "2026:12:07 10:00:00"  # DateTime
    Image.fromarray(pixels).save(path, "PNG", compress_level=9, exif=exif)


def _resave(source, target) -> None:
    """The same picture saved again: another compression level, the metadata stripped."""
    with Image.open(source) as image:
        image.load()
        Image.fromarray(np.asarray(image)).save(target, "PNG", compress_level=1)


def _fixed_folder(root, copies: bool) -> str:
    for index, name in enumerate(("cat", "dog")):
        for i in range(PER_CLASS):
            _save_original(str(root / name / f"{i:02d}.png"), seed=1000 * index + i)
            if copies and i < RESAVED:
                _resave(root / name / f"{i:02d}.png", root / name / f"resaved-{i:02d}.png")
    return str(root)


def _where(dataset_dir) -> dict[str, str]:
    """Each written photo's file name (class/name) -> its split."""
    found = {}
    for split in records.SPLITS:
        for _, _, source_ids in records.read_split(str(dataset_dir), split, 64, with_source_ids=True):
            for source_id in source_ids.numpy():
                name = "/".join(source_id.decode().split("/")[-2:])
                assert name not in found, f"{name} written twice"
                found[name] = split
    return found


def test_resaved_copies_are_one_photo_in_one_split_and_other_photos_keep_their_split(tmp_path):
    plain = prepare.prepare_dataset(f"folder:{_fixed_folder(tmp_path / 'plain', copies=False)}",
                                    str(tmp_path / "plain-out"), image_size=SIZE, seed=SEED)
    assert plain["counts"] == COUNTS_BEFORE  # tlp 0.1.0's split of the same photos

    root = _fixed_folder(tmp_path / "photos", copies=True)
    original, copy = os.path.join(root, "cat", "00.png"), os.path.join(root, "cat", "resaved-00.png")
    assert open(original, "rb").read() != open(copy, "rb").read()  # other bytes...
    with Image.open(original) as a, Image.open(copy) as b:
        assert a.getexif() and not b.getexif()  # ...metadata stripped...
        assert np.array_equal(np.asarray(a), np.asarray(b))  # ...the same picture

    metadata = prepare.prepare_dataset(f"folder:{root}", str(tmp_path / "out"), image_size=SIZE, seed=SEED)
    where = _where(tmp_path / "out")
    assert where == _where(tmp_path / "plain-out")  # no copy written; every original in its split
    assert metadata["counts"] == COUNTS_BEFORE
    duplicates = {os.path.relpath(s["path"], root): s for s in metadata["skipped"] if s["kind"] == "duplicate"}
    assert sorted(duplicates) == sorted(f"{name}/resaved-{i:02d}.png" for name in ("cat", "dog")
                                        for i in range(RESAVED))
    for path, entry in duplicates.items():
        kept = path.replace("resaved-", "")
        assert entry["duplicate_of"] == os.path.join(root, kept) and kept in entry["reason"]
    assert len(metadata["skipped"]) == 2 * RESAVED


def test_a_picture_filed_under_two_classes_is_left_out_and_listed_with_both_paths(tmp_path):
    import shutil

    root = tmp_path / "photos"
    _fixed_folder(root, copies=False)
    shutil.copy(root / "cat" / "00.png", root / "dog" / "from-cat.png")  # the same bytes
    _resave(root / "dog" / "03.png", root / "cat" / "zz-dog-03.png")  # the same picture, other bytes
    metadata = prepare.prepare_dataset(f"folder:{root}", str(tmp_path / "out"), image_size=SIZE, seed=SEED)

    conflicts = {os.path.relpath(s["path"], root): s for s in metadata["skipped"] if s["kind"] == "conflict"}
    assert sorted(conflicts) == ["cat/00.png", "cat/zz-dog-03.png", "dog/03.png", "dog/from-cat.png"]
    pairs = {"cat/00.png": "dog/from-cat.png", "dog/from-cat.png": "cat/00.png",
             "dog/03.png": "cat/zz-dog-03.png", "cat/zz-dog-03.png": "dog/03.png"}
    for path, other in pairs.items():
        assert conflicts[path]["conflicts_with"] == [str(root / other)]
        assert "labelling conflict" in conflicts[path]["reason"] and other in conflicts[path]["reason"]
    where = _where(tmp_path / "out")
    assert not set(pairs) & set(where)  # neither copy trains, validates or tests
    assert len(where) == 2 * PER_CLASS - 2
