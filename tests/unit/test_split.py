"""Stable splits: each photo's split comes from its content (SHA-256 salted with the seed), so a
folder that grows, shrinks or is renamed moves no photo, and the champion is re-scored only on
photos it never trained on."""

import hashlib
import os
import shutil
from collections import Counter

import pytest

from tests.conftest import write_image
from tests.support import ChampionRegistry
from tlp.components.lib import registration
from tlp.components.lib.dataprep import prepare, records, sources
from tlp.components.lib.dataprep import split as content_split


def _photo(path, index, label):
    # Distinct bytes per photo (colour and size), so none is skipped as a duplicate.
    write_image(str(path), size=(16 + index % 7, 12 + index % 5), color=(label * 120, (index * 37) % 256, index // 256))


def _folder(root, per_class, start=0, classes=("cat", "dog")):
    for label, name in enumerate(classes):
        for i in range(start, start + per_class):
            _photo(root / name / f"img_{i:04d}.png", i, label)
    return root


def _splits_by_content(dataset_dir):
    """content SHA-256 -> split, read back from the prepared TFRecords (source_id is the file path)."""
    found = {}
    for split in records.SPLITS:
        for _image, _label, source_id in records.read_split(dataset_dir, split, 64, with_source_ids=True).unbatch():
            path = source_id.numpy().decode()
            with open(path, "rb") as handle:
                found[hashlib.sha256(handle.read()).hexdigest()] = split
    return found


def _prepare(root, out):
    prepare.prepare_dataset(f"folder:{root}", str(out), image_size=32, seed=42)
    return _splits_by_content(str(out))


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A folder of 100 photos per class, prepared; then grown by 50 per class and prepared again."""
    base = tmp_path_factory.mktemp("grow")
    root = _folder(base / "photos", 100)
    before = _prepare(root, base / "before")
    _folder(root, 50, start=100)
    after = _prepare(root, base / "after")
    return base, root, before, after


def test_growing_a_folder_moves_no_photo(grown):
    _base, _root, before, after = grown
    assert len(before) == 200 and len(after) == 300
    moved = {h: (before[h], after[h]) for h in before if after[h] != before[h]}
    assert moved == {}, f"{len(moved)} of {len(before)} photos changed split"
    # The old shuffled split moved 18 of 30 test photos in the same experiment (issue 11).
    assert Counter(after.values())["test"] >= 1 and Counter(after.values())["val"] >= 1


def test_shrinking_and_renaming_moves_no_photo(grown, tmp_path):
    _base, root, _before, after = grown
    copy = tmp_path / "photos"
    shutil.copytree(root, copy)
    for name in ("cat", "dog"):
        files = sorted(os.listdir(copy / name))
        for gone in files[::4]:  # remove a quarter
            os.remove(copy / name / gone)
        for i, kept in enumerate(sorted(os.listdir(copy / name))[:30]):  # rename 30, one into a subfolder
            target = copy / name / ("holiday" if i == 0 else "") / f"renamed_{i}.png"
            target.parent.mkdir(exist_ok=True)
            os.rename(copy / name / kept, target)
    shrunk = _prepare(copy, tmp_path / "shrunk")
    assert len(shrunk) == 224
    assert {h: s for h, s in shrunk.items() if after[h] != s} == {}


def test_the_champion_is_rescored_only_on_photos_it_never_trained_on(grown, tmp_path, monkeypatch):
    """The champion trained on the first data set; the challenger's test split (grown folder, and a
    shrunk one where a tiny class pulls a training photo into test) holds none of its training photos."""
    base, root, before, _after = grown
    champion_train = {h for h, s in before.items() if s == "train"}

    def challenge_on(dataset_dir):
        scored = {}

        def fake_evaluate(model_dir, dataset, splits, exclude_source_ids=frozenset(), strategy=None):
            scored[model_dir] = set(exclude_source_ids)
            return {"test": {"accuracy": 0.5, "examples": 1}}

        monkeypatch.setattr(registration, "evaluate_model", fake_evaluate)
        monkeypatch.setattr(registration.model_lib, "read_info", lambda _: {"class_names": ["cat", "dog"]})
        promote, reason = registration.challenge(ChampionRegistry(), "pets", "2", 0.5, "candidate-model", dataset_dir,
                                                 0.0)
        assert promote is not None, reason
        excluded = scored["champion-model"]
        test_photos = {}
        for _image, _label, source_id in records.read_split(dataset_dir, "test", 64, with_source_ids=True).unbatch():
            path = source_id.numpy().decode()
            if path not in excluded:
                with open(path, "rb") as handle:
                    test_photos[hashlib.sha256(handle.read()).hexdigest()] = path
        return test_photos, excluded

    # Grown folder: no test photo was a training photo of the champion; nothing needs leaving out.
    test_photos, excluded = challenge_on(str(base / "after"))
    assert test_photos and not excluded and not set(test_photos) & champion_train

    # Shrunk so that "dog" keeps 4 of the champion's training photos: one is pulled into test and left out.
    shrunk = tmp_path / "photos"
    shutil.copytree(root, shrunk)
    dog_train = sorted(p for p in os.listdir(shrunk / "dog")
                       if hashlib.sha256((shrunk / "dog" / p).read_bytes()).hexdigest() in champion_train)
    for name in os.listdir(shrunk / "dog"):
        if name not in dog_train[:4]:
            os.remove(shrunk / "dog" / name)
    prepare.prepare_dataset(f"folder:{shrunk}", str(tmp_path / "small"), image_size=32, seed=42)
    test_photos, excluded = challenge_on(str(tmp_path / "small"))
    assert excluded, "the small class's pulled-in test photo must be left out of the champion's scoring"
    assert not set(test_photos) & champion_train


def _examples(per_class, classes=3, tag="x"):
    return [content_split.Example(f"{label}/{tag}{i}", label,
                           content_hash=hashlib.sha256(f"{label}-{tag}-{i}".encode()).hexdigest())
            for label in range(classes) for i in range(per_class)]


@pytest.mark.parametrize("per_class", [500, 640, 1000, 2500])
@pytest.mark.parametrize("seed", [1, 42, 2026])
def test_fractions_within_two_points_from_500_photos_per_class(per_class, seed):
    splits, record = content_split.split_by_content(_examples(per_class, tag=f"s{seed}"), seed)
    for label in range(3):
        counts = Counter(split for split in records.SPLITS for e in splits[split] if e.label == label)
        for split, share in zip(records.SPLITS, content_split.SPLIT_FRACTIONS, strict=True):
            assert abs(counts[split] / per_class - share) <= 0.02 + 1e-9, (label, split, counts)
    # Balancing moves few photos, and only between neighbouring splits near their boundary.
    assert all({m["from"], m["to"]} != {"train", "test"} for m in record["moved"])


def test_train_and_test_never_swap_as_a_large_class_grows():
    first, _ = content_split.split_by_content(_examples(500, classes=1), 42)
    second, record = content_split.split_by_content(_examples(700, classes=1), 42)
    where = {e.source_id: s for s in records.SPLITS for e in second[s]}
    changed = [(s, where[e.source_id]) for s in records.SPLITS for e in first[s] if where[e.source_id] != s]
    assert all({a, b} != {"train", "test"} for a, b in changed)
    assert len(changed) <= 10  # a few photos by the boundaries, out of 500


@pytest.mark.parametrize("per_class", [10, 11, 15, 20, 30])
def test_small_classes_get_a_val_and_a_test_photo(per_class):
    for seed in range(20):
        splits, _ = content_split.split_by_content(_examples(per_class, tag=f"{seed}"), seed)
        for label in range(3):
            assert all(any(e.label == label for e in splits[s]) for s in records.SPLITS), (seed, label)


def test_the_split_method_is_recorded(tmp_path):
    metadata = prepare.prepare_dataset("sample:20", str(tmp_path / "out"), image_size=32, seed=5)
    split = metadata["split"]
    assert split["method"] == "content-sha256" and split["seed"] == 5 and split["fractions"] == [0.8, 0.1, 0.1]
    assert isinstance(split["moved"], list)
    # A bigger sample keeps the smaller one's photos where they were (generated photos: their name is their content).
    grown, _ = content_split.split_by_content(_sample(150), 5)
    first, _ = content_split.split_by_content(_sample(100), 5)
    where = {e.source_id: s for s in records.SPLITS for e in grown[s]}
    assert all(where[e.source_id] == s for s in records.SPLITS for e in first[s])


def _sample(per_class):
    listing = sources.list_sample(per_class, seed=5)
    return [content_split.Example(source_id, label) for unit in listing.units for source_id, label, _ in unit[2]]


def test_tied_positions_are_ordered_by_name_as_before():
    """The split asks for a photo's name only where positions tie, and orders as (position, name)."""
    import random

    rng = random.Random(3)
    members = [(rng.choice((0.1, 0.5, 0.5, 0.7)), content_split.Example(f"p{rng.randrange(50):02d}", 0))
               for _ in range(60)]
    assert content_split._by_position_then_name(members) == sorted(members, key=lambda m: (m[0], m[1].source_id))
