"""Listing a bucket of photos: class prefixes in parallel, for the fingerprint step and data prep."""

import pytest

from tests.cloud.listing_latency import add_listing_latency
from tlp.components.lib.dataprep import sources
from tlp.components.lib.fingerprint import fingerprint_source

CLASSES = [f"class-{index}" for index in range(8)]


def _bucket(standin):
    for name in CLASSES:
        for i in range(12):
            standin.put_object(f"gs://photos/pets/{name}/{i:03d}.jpg", b"x" * (i + 1))
    standin.put_object("gs://photos/pets/class-0/nested/deep.jpg", b"deep")  # a class's subfolder is walked
    standin.put_object("gs://photos/pets/class-1/notes.txt", b"no photo")
    standin.put_object("gs://photos/pets/.thumbnails/000.jpg", b"hidden")  # not a class
    standin.put_object("gs://photos/pets/readme.md", b"beside the classes")
    standin.put_object("gs://photos/elsewhere/000.jpg", b"outside the folder")


def test_the_class_prefixes_of_a_bucket_are_listed_at_once(standin, monkeypatch):
    _bucket(standin)
    monkeypatch.setattr(sources, "LIST_PAGE_SIZE", 5)  # 3 pages per class
    latency = add_listing_latency(standin, seconds=0.2, gather=len(CLASSES))
    listed = sources.list_bucket("gs://photos/pets")
    # Every class's first page was asked for before any had come back (one after another: 1 at a time).
    assert latency.most_at_once == len(CLASSES) == sources.LISTING_THREADS
    assert sorted(listed) == CLASSES
    assert [path for path, _, _ in listed["class-0"]][-2:] == ["gs://photos/pets/class-0/011.jpg",
                                                             "gs://photos/pets/class-0/nested/deep.jpg"]
    assert [size for _, size, _ in listed["class-2"]] == list(range(1, 13))
    assert all(generation > 0 for objects in listed.values() for _, _, generation in objects)
    # Each page carries only what the listing keeps, and the token to the next page.
    asked = {r.query.get("fields") for r in standin.find("GET", r"^/storage/v1/b/photos/o/?$")}
    assert asked == {"items(name,size,generation),nextPageToken", "items(name),prefixes,nextPageToken"}


def test_data_prep_lists_a_bucket_by_class_prefix_at_once(standin):
    _bucket(standin)
    latency = add_listing_latency(standin, seconds=0.05, gather=len(CLASSES))
    listing = sources.list_folder("gs://photos/pets")
    assert listing.class_names == CLASSES and listing.photos == 8 * 12 + 1
    assert [entry["path"] for entry in listing.skipped] == ["gs://photos/pets/class-1/notes.txt"]
    assert listing.units[0][1][0] == ("gs://photos/pets/class-0/000.jpg", 0)
    assert latency.most_at_once == len(CLASSES)


def test_the_fingerprint_step_lists_a_bucket_by_class_prefix_at_once(standin):
    _bucket(standin)
    latency = add_listing_latency(standin, seconds=0.05, gather=len(CLASSES))
    found = fingerprint_source("folder:gs://photos/pets")
    assert found.files == 8 * 12 + 1 and found.total_bytes == 8 * sum(range(1, 13)) + len(b"deep")
    assert latency.most_at_once == len(CLASSES)


def test_a_bucket_folder_with_nothing_in_it_is_named(standin):
    import pytest

    from tlp.components.lib.specs import ConfigError

    standin.add_bucket("photos")
    with pytest.raises(ConfigError, match=r"folder:gs://photos/empty holds no objects"):
        sources.list_folder("gs://photos/empty")


def test_a_refused_listing_names_the_bucket_and_the_role(standin):
    import pytest

    from tlp.components.lib.specs import ServiceError

    _bucket(standin)
    standin.fail_storage("gs://photos", 403)
    with pytest.raises(ServiceError) as refused:
        fingerprint_source("folder:gs://photos/pets")
    message = str(refused.value)
    assert "refused" in message and "roles/storage.objectViewer" in message and "gs://photos" in message
    assert len(message.splitlines()) == 1



@pytest.mark.slow  # starts the stand-in's own process and waits on 14 paused pages
def test_the_listing_bench_compares_the_same_listing_one_prefix_after_another(monkeypatch):
    """bench.listing: the stand-in in its own process; one thread, then LISTING_THREADS, same pages."""
    from bench.listing import measure

    monkeypatch.setattr(sources, "LIST_PAGE_SIZE", 10)  # 3 pages per class
    result = measure(classes=3, per_class=25, page_seconds=0.2, repeats=1)  # a pause the threads all meet in
    assert result["objects"] == 75
    assert result["sequential"]["pages"] == result["parallel"]["pages"] == 1 + 3 * 3
    assert result["sequential"]["most_at_once"] == 1 and result["parallel"]["most_at_once"] == 3


# --- one listing per run: the fingerprint step's, read by data prep ------------------------------


def _png(seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _photos(standin, per_class: int = 12) -> None:
    for label, name in enumerate(("cat", "dog")):
        for i in range(per_class):
            standin.put_object(f"gs://photos/pets/{name}/{i:03d}.png", _png(100 * label + i))


def _listings(standin) -> int:
    """Listing requests (pages) the bucket answered so far."""
    return len(standin.find("GET", r"^/storage/v1/b/photos/o/?$"))


def _prepare(tmp_path, name: str, fingerprint: str, listings: str) -> dict:
    from tlp.components.lib.dataprep import prepare

    return prepare.prepare_dataset("folder:gs://photos/pets", str(tmp_path / name), image_size=32,
                                   source_fingerprint=fingerprint, listing_folder=listings, processes=0)


def _run_steps(tmp_path, name: str, listings: str):
    """The fingerprint step, then data prep, as the pipeline wires them (their kfp functions)."""
    import os

    from kfp import dsl

    from tlp.components.data_fingerprint import data_fingerprint
    from tlp.components.data_prep import data_prep

    options = {"data": "folder:gs://photos/pets"}
    found = data_fingerprint.python_func(options=options, listing_folder=listings)
    dataset = dsl.Dataset(name="dataset", uri=os.path.join(str(tmp_path), name), metadata={})
    prepared = data_prep.python_func(dataset=dataset, options={**options, "image_size": 32, "seed": 3},
                                     source_fingerprint=found.fingerprint, listing_folder=listings)
    return found, prepared


def test_a_run_lists_the_bucket_once_and_a_changed_bucket_again(standin, tmp_path, capsys):
    import os

    _photos(standin)
    listings = str(tmp_path / "listings")
    found, prepared = _run_steps(tmp_path, "first", listings)
    assert _listings(standin) == 3  # the class prefixes, then each class (one page each): once, for both steps
    assert prepared.train_images + prepared.val_images + prepared.test_images == 24
    assert "the fingerprint step's listing of gs://photos/pets" in capsys.readouterr().out

    standin.put_object("gs://photos/pets/dog/new.png", _png(999))  # the bucket changed
    changed, prepared = _run_steps(tmp_path, "second", listings)
    assert changed.fingerprint != found.fingerprint and _listings(standin) == 2 * 3  # listed again, once
    assert prepared.train_images + prepared.val_images + prepared.test_images == 25  # no stale listing was read
    assert len(os.listdir(listings)) == 1  # the folder's earlier listing was replaced, not kept beside


def test_data_prep_lists_the_bucket_itself_without_a_saved_listing(standin, tmp_path):
    from tlp.components.lib.dataprep import sources

    _photos(standin)
    listings = str(tmp_path / "listings")
    found = fingerprint_source("folder:gs://photos/pets", listings)
    saved = sources.saved_listing_path(listings, "gs://photos/pets", found.fingerprint)
    with open(saved) as handle:
        lines = handle.readlines()
    with open(saved, "w") as handle:  # cut short (a step stopped while writing it): never read in part
        handle.writelines(lines[:-1] + [lines[-1][:7]])
    metadata = _prepare(tmp_path, "cut", found.fingerprint, listings)
    assert _listings(standin) == 2 * 3 and sum(metadata["num_examples"].values()) == 24
    metadata = _prepare(tmp_path, "other", "0123456789abcdef", listings)  # no listing with this fingerprint
    assert _listings(standin) == 3 * 3 and sum(metadata["num_examples"].values()) == 24


@pytest.mark.parametrize("root", ["file-in-the-way", "minio://mlpipeline/v2/artifacts"])
def test_a_listing_that_cannot_be_saved_is_said_and_data_prep_lists_the_bucket_itself(standin, tmp_path, capsys, root):
    """Saving the listing only spares data prep a second listing: a pipeline root Beam cannot
    write (a self-hosted Kubeflow's minio://, a file in the way) must not stop the run."""
    from tlp.components.lib.dataprep.prepare import _listing
    from tlp.components.lib.specs import parse_data_spec

    _photos(standin, per_class=2)
    if root == "file-in-the-way":
        (tmp_path / "root").write_text("a file where the pipeline root should be")
        root = str(tmp_path / "root")
    listings = f"{root}/listings"
    found = fingerprint_source("folder:gs://photos/pets", listings)
    said = capsys.readouterr().out
    warning = [line for line in said.splitlines() if "could not save the listing of gs://photos/pets" in line]
    assert len(warning) == 1 and "data prep will list the bucket again" in warning[0]
    assert found.files == 4 and _listings(standin) == 3
    listing = _listing(parse_data_spec("folder:gs://photos/pets"), 0, None, listings, found.fingerprint)
    assert sorted(listing.class_names) == ["cat", "dog"]
    assert _listings(standin) == 2 * 3  # data prep listed it again, and said so
    assert "no usable listing of gs://photos/pets" in capsys.readouterr().out


@pytest.mark.slow  # kfp's local runner: each step in a Python process of its own
def test_the_local_runner_gives_both_steps_one_listing_under_the_pipeline_root(standin, tmp_path):
    """The pipeline's wiring (LISTING_FOLDER, the pipeline root placeholder) through kfp.local."""
    import os

    from kfp import dsl, local

    from tlp.components.data_fingerprint import data_fingerprint
    from tlp.components.data_prep import data_prep
    from tlp.pipelines.training import LISTING_FOLDER

    _photos(standin)
    root = tmp_path / "root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))

    @dsl.pipeline
    def two_steps():
        found = data_fingerprint(options={"data": "folder:gs://photos/pets"}, listing_folder=LISTING_FOLDER)
        data_prep(options={"data": "folder:gs://photos/pets", "image_size": 32, "seed": 3},
                  source_fingerprint=found.outputs["fingerprint"], listing_folder=LISTING_FOLDER)

    two_steps()
    assert _listings(standin) == 3  # listed by the fingerprint step alone
    assert [name.startswith("bucket-listing-") for name in os.listdir(root / "listings")] == [True]
