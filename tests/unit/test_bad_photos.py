"""Real-world photo folders: broken, odd-format, oddly named, linked and duplicated files."""

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_image
from tlp.components.lib.dataprep import encode, prepare, records, sources
from tlp.components.lib.specs import ConfigError

SIZE = 32  # the smallest allowed --image-size keeps data prep fast


def _photos(root, per_class=10, classes=("cat", "dog")):
    """per_class distinct tiny JPEGs per class (distinct colours, so no byte-identical duplicates)."""
    for index, name in enumerate(classes):
        for i in range(per_class):
            write_image(os.path.join(root, name, f"{i}.jpg"), size=(12, 8), color=(index * 200, 80, i * 10))
    return str(root)


def _prepare(root, out, **kwargs):
    return prepare.prepare_dataset(f"folder:{root}", str(out), image_size=SIZE, seed=1, **kwargs)


def _skipped(metadata):
    return {os.path.basename(s["path"]): s for s in metadata["skipped"]}


def _jpeg(pixels, **save):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def _noise_jpeg(seed):
    """A JPEG whose bytes are mostly scan data, so cutting it in half cuts the pixels, not the headers."""
    return _jpeg(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _all_source_ids(dataset_dir):
    ids = []
    for split in records.SPLITS:
        for _, _, source_ids in records.read_split(dataset_dir, split, 64, with_source_ids=True):
            ids += [s.decode() for s in source_ids.numpy()]
    return ids


# 1
def test_truncated_jpeg_is_skipped_as_unreadable(tmp_path, monkeypatch):
    from PIL import ImageFile

    root = _photos(tmp_path / "photos")
    data = _noise_jpeg(0)
    (tmp_path / "photos" / "cat" / "half.jpg").write_bytes(data[: len(data) // 2])
    metadata = _prepare(root, tmp_path / "out")
    # Deliberate: a truncated photo is skipped, not trained on half grey (Pillow's default).
    entry = _skipped(metadata)["half.jpg"]
    assert entry["kind"] == "unreadable" and "truncated" in entry["reason"]
    assert sum(metadata["num_examples"].values()) == 20
    # tfds flips this Pillow global in-process (create_thumbnail); then it decodes partially, not crashes.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert encode.decode_bytes(data[: len(data) // 2], SIZE).shape == (64, 64, 3)


# 2
def test_zero_byte_file_is_skipped(tmp_path):
    root = _photos(tmp_path / "photos")
    (tmp_path / "photos" / "dog" / "empty.jpg").write_bytes(b"")
    entry = _skipped(_prepare(root, tmp_path / "out"))["empty.jpg"]
    assert entry["kind"] == "unreadable" and "0 bytes" in entry["reason"]


# 3
def test_non_image_files_are_skipped_and_not_counted_as_unreadable(tmp_path):
    root = _photos(tmp_path / "photos")
    for name in ("cat", "dog"):
        for junk in ("notes.txt", ".DS_Store", "Thumbs.db"):
            (tmp_path / "photos" / name / junk).write_bytes(b"\x00junk")
    # 6 junk files next to 20 photos is 23%: over the default 0.1 if they counted, so this must pass.
    metadata = _prepare(root, tmp_path / "out")
    assert len(metadata["skipped"]) == 6
    assert {s["kind"] for s in metadata["skipped"]} == {"not_image"}
    assert {os.path.basename(s["path"]) for s in metadata["skipped"]} == {"notes.txt", ".DS_Store", "Thumbs.db"}
    assert sum(metadata["num_examples"].values()) == 20


# 4
@pytest.mark.parametrize("name, fmt", [
    ("a.png", "PNG"), ("a.gif", "GIF"), ("a.bmp", "BMP"), ("a.webp", "WEBP"), ("a.tif", "TIFF"), ("a.TIFF", "TIFF"),
])
def test_other_formats_are_read(tmp_path, name, fmt):
    path = str(tmp_path / name)
    red = Image.new("RGB", (40, 30), (255, 0, 0))
    # GIF: two frames, the first is used; the others are single images.
    extra = {"save_all": True, "append_images": [Image.new("RGB", (40, 30), (0, 0, 255))]} if fmt == "GIF" else {}
    red.save(path, format=fmt, **extra)
    assert path.lower().endswith(sources.IMAGE_EXTENSIONS)
    pixels = encode.decode_file(path, SIZE)
    assert pixels.shape == (30, 40, 3) and pixels.dtype == np.uint8
    r, g, b = pixels.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 40 and b < 40


# 5
@pytest.mark.parametrize("mode, fmt, expected", [
    ("L", "PNG", (76, 76, 76)),  # luma of pure red
    ("RGBA", "PNG", (255, 0, 0)),
    ("P", "PNG", (255, 0, 0)),
    ("CMYK", "JPEG", (255, 0, 0)),
])
def test_colour_modes_become_rgb(tmp_path, mode, fmt, expected):
    path = write_image(str(tmp_path / f"a.{fmt.lower()}"), color=(255, 0, 0), mode=mode, fmt=fmt)
    assert Image.open(path).mode == mode
    pixels = encode.decode_file(path, SIZE)
    assert pixels.shape == (30, 40, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.reshape(-1, 3).mean(axis=0) - expected).max() < 12


def test_transparent_pixels_become_white(tmp_path):
    image = Image.new("RGBA", (40, 30), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 20, 30))  # left half fully transparent (black underneath)
    path = str(tmp_path / "alpha.png")
    image.save(path)
    pixels = encode.decode_file(path, SIZE)
    assert pixels[15, 5].tolist() == [255, 255, 255] and pixels[15, 35].tolist() == [255, 0, 0]


# 6
def test_exif_orientation_is_applied():
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 20:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    decoded = encode.decode_bytes(buffer.getvalue(), SIZE)
    assert decoded.shape == (40, 20, 3)  # tall: 20 wide, 40 high
    top, bottom = decoded[:15].reshape(-1, 3).mean(axis=0), decoded[-15:].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # the left edge is now the top


# 7
def test_huge_jpeg_is_decoded_in_draft_mode():
    buffer = io.BytesIO()
    Image.new("L", (10000, 10000), 128).save(buffer, "JPEG")  # grey: 100 MB to make, not 400 MB
    pixels = encode.decode_bytes(buffer.getvalue(), 64)
    # libjpeg scales by 1/8 at most, so draft mode gives 1250 px, not the brief's 4*64*2; still 64x fewer
    # pixels than a full decode (the full 10000x10000 is never in memory).
    assert pixels.shape == (1250, 1250, 3)
    assert abs(int(pixels.mean()) - 128) <= 2


def test_image_above_pixel_ceiling_is_refused():
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    # Rewrite the IHDR to 16000x15000 (240 Mpx): Pillow only warns below 2x its limit, so no data needed.
    ihdr = b"IHDR" + struct.pack(">II", 16000, 15000) + bytes(data[24:29])
    data[12:33] = ihdr + struct.pack(">I", zlib.crc32(ihdr))
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ValueError, match="pixel ceiling"):
        encode.decode_bytes(bytes(data), 64)


# 8
def test_nested_and_symlinked_files_and_folders_are_included(tmp_path):
    root = _photos(tmp_path / "photos")
    write_image(str(tmp_path / "photos" / "cat" / "2024" / "june" / "deep.jpg"), color=(1, 2, 3))
    linked_file = write_image(str(tmp_path / "elsewhere" / "file.jpg"), color=(4, 5, 6))
    write_image(str(tmp_path / "elsewhere" / "folder" / "inside.jpg"), color=(7, 8, 9))
    os.symlink(linked_file, tmp_path / "photos" / "cat" / "link.jpg")
    os.symlink(tmp_path / "elsewhere" / "folder", tmp_path / "photos" / "cat" / "linked_folder")
    metadata = _prepare(root, tmp_path / "out")
    assert metadata["skipped"] == []
    assert sum(metadata["counts"][split]["cat"] for split in records.SPLITS) == 13
    ids = _all_source_ids(str(tmp_path / "out"))
    assert {os.path.relpath(i, root) for i in ids} >= {
        "cat/2024/june/deep.jpg", "cat/link.jpg", "cat/linked_folder/inside.jpg"
    }


def test_symlink_loop_is_walked_once(tmp_path):
    root = _photos(tmp_path / "photos")
    os.symlink("..", tmp_path / "photos" / "cat" / "up")  # a loop that would also pull in dog/
    os.symlink(".", tmp_path / "photos" / "dog" / "self")
    metadata = _prepare(root, tmp_path / "out")
    # The links add no files: gfile.walk lists each photo ~40 times (until ELOOP), and dog's under cat.
    assert metadata["skipped"] == []
    assert sum(metadata["num_examples"].values()) == 20


# 9
def test_class_names_with_spaces_and_non_ascii_round_trip(tmp_path):
    classes = ("chats sauvages", "Hunde-Größe")
    root = _photos(tmp_path / "photos", classes=classes)
    out = str(tmp_path / "out")
    metadata = _prepare(root, out)
    assert metadata["class_names"] == sorted(classes)
    assert records.read_metadata(out)["class_names"] == sorted(classes)
    counts = json.loads((tmp_path / "out" / "metadata.json").read_text(encoding="utf-8"))["counts"]
    assert {name: sum(counts[s][name] for s in records.SPLITS) for name in classes} == {
        "Hunde-Größe": 10, "chats sauvages": 10,
    }
    for split in records.SPLITS:
        for image, labels, source_ids in records.read_split(out, split, 64, with_source_ids=True):
            assert image.shape[1:] == (SIZE, SIZE, 3)
            for label, source_id in zip(labels.numpy(), source_ids.numpy(), strict=True):
                assert f"/{metadata['class_names'][label]}/" in source_id.decode("utf-8")


# 10
def test_duplicate_bytes_are_kept_once(tmp_path):
    root = _photos(tmp_path / "photos")
    original = tmp_path / "photos" / "cat" / "0.jpg"
    (tmp_path / "photos" / "cat" / "copy of 0.jpg").write_bytes(original.read_bytes())
    metadata = _prepare(root, tmp_path / "out")
    entry = _skipped(metadata)["copy of 0.jpg"]
    assert entry["kind"] == "duplicate" and "0.jpg" in entry["reason"]
    ids = _all_source_ids(str(tmp_path / "out"))
    assert len(ids) == len(set(ids)) == 20
    assert sum(os.path.basename(i) in ("0.jpg", "copy of 0.jpg") and "/cat/" in i for i in ids) == 1


# 11
def test_max_skipped_fraction(tmp_path):
    root = _photos(tmp_path / "photos")
    for i in range(5):
        data = _noise_jpeg(i)
        (tmp_path / "photos" / "cat" / f"broken{i}.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"5 of 25 image files.*--max-skipped-fraction"):
        _prepare(root, out)
    # Written before failing, so the user can see which files to fix.
    saved = json.loads((out / "metadata.json").read_text())
    assert sorted(os.path.basename(s["path"]) for s in saved["skipped"]) == [f"broken{i}.jpg" for i in range(5)]
    metadata = _prepare(root, tmp_path / "out2", max_skipped_fraction=0.5)
    assert sum(metadata["num_examples"].values()) == 20 and len(metadata["skipped"]) == 5


# 12
def test_class_too_small_for_a_split_is_refused(tmp_path):
    root = _photos(tmp_path / "photos")
    for i in range(2):  # own colours: _photos' would be byte-identical to cat's and skipped as duplicates
        write_image(str(tmp_path / "photos" / "fox" / f"{i}.jpg"), size=(12, 8), color=(90, 160, i * 10))
    with pytest.raises(ConfigError, match=r"the val split has no images of class\(es\) \['fox'\]"):
        _prepare(root, tmp_path / "out")


def test_only_one_class_with_readable_images_is_refused(tmp_path):
    root = _photos(tmp_path / "photos", classes=("dog",))
    os.makedirs(tmp_path / "photos" / "cat")
    for i in range(3):
        (tmp_path / "photos" / "cat" / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken %d" % i)
    with pytest.raises(ConfigError, match=r"1 class folder\(s\) with readable images.*'cat' \(0 images\)"):
        _prepare(root, tmp_path / "out")


# 13 (issue 28, point 4)
def test_a_file_that_cannot_be_read_stops_data_prep_and_a_dangling_link_is_skipped(tmp_path, monkeypatch):
    """Only bytes that were read and do not decode are unreadable: a read the OS refuses stops the
    step with one sentence (a data set silently missing the file would differ from run to run)."""
    import builtins

    from tlp.components.lib.specs import ServiceError

    root = _photos(tmp_path / "photos")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "photos" / "cat" / "link.jpg")
    locked = os.path.join(root, "dog", "3.jpg")

    def refusing_open(path, *args, **kwargs):  # the fault: what the OS answers for a file without read access
        if str(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(sources, "open", refusing_open, raising=False)
    with pytest.raises(ServiceError) as stopped:
        _prepare(root, tmp_path / "out")
    assert str(stopped.value).startswith(f"could not read {locked} (PermissionError")
    assert "\n" not in str(stopped.value)
    monkeypatch.undo()
    entry = _skipped(_prepare(root, tmp_path / "out2"))["link.jpg"]
    assert entry["kind"] == "unreadable" and entry["reason"].startswith("a link to a missing file")
