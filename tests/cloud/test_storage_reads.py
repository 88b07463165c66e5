"""A failing bucket is no bad photo (issue 28, point 4): through the real storage client against
the stand-in, a photo Cloud Storage answers 503 twice and then serves is kept (the client's retry
policy), and a 403 stops data prep, ``tlp drift`` and ``tlp predict`` with one sentence naming the
bucket and the role to grant; only bytes that were read and do not decode are "unreadable"."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from tlp.components.lib.dataprep import prepare, records, sources
from tlp.components.lib.specs import ServiceError

ROLE = "roles/storage.objectViewer"
REMOTE = "gs://photos/cat/remote.png"


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _listing_with_a_remote_photo(root) -> sources.Listing:
    """A local folder of two classes plus one photo of the first class in the stand-in's bucket."""
    for label, name in enumerate(("cat", "dog")):
        os.makedirs(root / name)
        for i in range(10):
            (root / name / f"{i}.png").write_bytes(_png(100 * label + i))
    listing = sources.list_folder(str(root))
    listing.units.append(("files", [(REMOTE, 0)]))
    listing.photos += 1
    return listing


def _run(listing, out, processes=0):
    prepare.run_pipeline(listing, str(out), image_size=32, seed=1, max_workers=1, min_shard_records=16,
                         processes=processes)
    return prepare.read_json(str(out))


def _statuses(standin, uri):
    bucket, name = uri[len("gs://"):].split("/", 1)
    return [r.status for r in standin.requests if r.method == "GET" and r.path.endswith(f"/b/{bucket}/o/{name}")]


def test_a_photo_answered_503_twice_is_retried_and_kept(standin, tmp_path):
    standin.put_object(REMOTE, _png(999))
    standin.fail_storage(REMOTE, 503, 503)
    metadata = _run(_listing_with_a_remote_photo(tmp_path / "photos"), tmp_path / "out")
    assert _statuses(standin, REMOTE)[:3] == [503, 503, 200]  # the storage client's retries
    assert metadata["skipped"] == []
    written = [s.decode() for split in records.SPLITS
               for _, _, ids in records.read_split(str(tmp_path / "out"), split, 64, with_source_ids=True)
               for s in ids.numpy()]
    assert REMOTE in written and len(written) == 21


@pytest.mark.parametrize("processes", [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: worker processes
def test_a_refused_read_stops_data_prep_with_the_bucket_and_the_role(standin, tmp_path, processes):
    standin.put_object(REMOTE, _png(999))
    standin.fail_storage(REMOTE, *[403] * 20)
    with pytest.raises(ServiceError) as stopped:
        _run(_listing_with_a_remote_photo(tmp_path / "photos"), tmp_path / "out", processes)
    message = str(stopped.value)
    assert f"reading {REMOTE} was refused" in message and "bucket gs://photos" in message and ROLE in message
    assert "\n" not in message and message.count(". ") == 0  # one sentence
    assert not (tmp_path / "out" / records.METADATA_FILE).exists()  # no data set missing the photo


def test_bytes_that_do_not_decode_are_still_skipped_as_unreadable(standin, tmp_path):
    standin.put_object(REMOTE, b"\x89PNG\r\n\x1a\n truncated")
    metadata = _run(_listing_with_a_remote_photo(tmp_path / "photos"), tmp_path / "out")
    [entry] = metadata["skipped"]
    assert entry["path"] == REMOTE and entry["kind"] == "unreadable"


def test_tlp_drift_reads_through_retries_and_stops_on_a_refusal(standin, tuned_model, capsys):
    from tlp.pipelines.cli import main
    from tlp.pipelines.drift import features_of

    for i in range(3):
        standin.put_object(f"gs://photos/new/{i}.png", _png(i))
    standin.fail_storage("gs://photos/new/1.png", 503, 503)
    paths = [f"gs://photos/new/{i}.png" for i in range(3)]
    features, scored, unreadable, _ = features_of(tuned_model[0], paths)
    assert scored == paths and not unreadable and features.shape[0] == 3

    standin.fail_storage("gs://photos/new/2.png", *[403] * 20)
    assert main(["drift", tuned_model[0], "gs://photos/new"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could be decoded" not in err
    assert "reading gs://photos/new/2.png was refused" in err and "bucket gs://photos" in err and ROLE in err


def test_tlp_predict_batch_job_stops_on_a_refused_listing(standin, capsys):
    from tlp.pipelines.cli import main

    standin.put_object("gs://photos/in/0.png", _png(0))
    standin.fail_storage("gs://photos", *[403] * 20)
    registry = f"vertex://tlp-test/us-central1?api_endpoint={standin.url}"
    from tests.cloud.test_deploy import seed_model

    seed_model(standin)
    assert main(["predict", "cats@champion", "gs://photos/in", "--batch-job", "--output", "gs://preds/run1",
                 "--registry", registry]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "reading gs://photos/in was refused" in err and "bucket gs://photos" in err and ROLE in err
    assert not standin.find("POST", r"/batchPredictionJobs$")  # nothing started
