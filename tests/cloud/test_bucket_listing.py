"""Listing a bucket of photos: class prefixes in parallel, for the fingerprint step and data prep."""

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
    latency = add_listing_latency(standin, seconds=0.2)
    listed = sources.list_bucket("gs://photos/pets")
    # Every class's first page was asked for before any had come back (one after another: 1 at a time).
    assert latency.most_at_once == len(CLASSES) == sources.LISTING_THREADS
    assert sorted(listed) == CLASSES
    assert [path for path, _, _ in listed["class-0"]][-2:] == ["gs://photos/pets/class-0/011.jpg",
                                                             "gs://photos/pets/class-0/nested/deep.jpg"]
    assert [size for _, size, _ in listed["class-2"]] == list(range(1, 13))
    assert all(generation > 0 for objects in listed.values() for _, _, generation in objects)


def test_data_prep_lists_a_bucket_by_class_prefix_at_once(standin):
    _bucket(standin)
    latency = add_listing_latency(standin, seconds=0.05)
    listing = sources.list_folder("gs://photos/pets")
    assert listing.class_names == CLASSES and listing.photos == 8 * 12 + 1
    assert [entry["path"] for entry in listing.skipped] == ["gs://photos/pets/class-1/notes.txt"]
    assert listing.units[0][1][0] == ("gs://photos/pets/class-0/000.jpg", 0)
    assert latency.most_at_once == len(CLASSES)


def test_the_fingerprint_step_lists_a_bucket_by_class_prefix_at_once(standin):
    _bucket(standin)
    latency = add_listing_latency(standin, seconds=0.05)
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
