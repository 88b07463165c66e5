"""The data-fingerprint step: the same data gives the same fingerprint, one changed photo a new one."""

import os

import pytest

from tests.conftest import write_image
from tlp.components.data_fingerprint import data_fingerprint
from tlp.components.lib.fingerprint import fingerprint_source
from tlp.components.lib.specs import ConfigError


def _folder(root):
    for label, name in enumerate(("cat", "dog")):
        for i in range(5):
            write_image(str(root / name / f"{i}.jpg"), color=(label * 200, i * 20, 0))
    return root


def test_a_folder_fingerprint_changes_exactly_when_a_photo_does(tmp_path):
    root = _folder(tmp_path / "photos")
    first = fingerprint_source(f"folder:{root}")
    assert first.files == 10 and first.total_bytes > 0 and len(first.fingerprint) == 16
    assert fingerprint_source(f"folder:{root}") == first  # listing again: nothing changed

    (root / "dog" / "notes.txt").write_text("not a photo")  # data prep skips it; so does the fingerprint
    (root / ".thumbnails").mkdir()
    write_image(str(root / ".thumbnails" / "x" / "t.jpg"))  # a hidden folder is no class
    assert fingerprint_source(f"folder:{root}").fingerprint == first.fingerprint

    write_image(str(root / "cat" / "3.jpg"), color=(1, 2, 3))  # one photo replaced
    stat = os.stat(root / "cat" / "3.jpg")
    os.utime(root / "cat" / "3.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = fingerprint_source(f"folder:{root}")
    assert changed.fingerprint != first.fingerprint and changed.files == 10

    write_image(str(root / "dog" / "new.jpg"))  # one photo added
    assert fingerprint_source(f"folder:{root}").files == 11
    os.rename(root / "dog" / "new.jpg", root / "cat" / "new.jpg")  # moved to another class
    moved = fingerprint_source(f"folder:{root}")
    assert moved.files == 11 and moved.fingerprint not in (first.fingerprint, changed.fingerprint)


def test_sample_and_tfds_fingerprints_name_the_source():
    assert fingerprint_source("sample:30") == fingerprint_source("sample:30")
    assert fingerprint_source("sample:30").fingerprint != fingerprint_source("sample:40").fingerprint
    tfds = fingerprint_source("tfds:cats_vs_dogs")  # the builder's version, no download
    assert "cats_vs_dogs/" in tfds.description and tfds.files == 0
    with pytest.raises(ConfigError, match="is not a TFDS data set"):
        fingerprint_source("tfds:no_such_dataset_xyz")
    with pytest.raises(ConfigError, match="is not a directory"):
        fingerprint_source("folder:/no/such/folder")


def test_the_component_returns_the_fingerprint(tmp_path):
    root = _folder(tmp_path / "photos")
    result = data_fingerprint.python_func(options={"data": f"folder:{root}"})
    assert result.fingerprint == fingerprint_source(f"folder:{root}").fingerprint
    assert result.files == 10 and "10 image files" in result.description
