"""Data prep on Dataflow: the real DataflowRunner (Beam 2.77) stages to the stand-in's Cloud
Storage and submits to the stand-in's Dataflow API (tests/cloud/dataflow_api.py)."""

import pytest

from tlp.components.lib.dataprep import prepare
from tlp.components.lib.specs import ServiceError

SA = "prep@tlp-test.iam.gserviceaccount.com"


def _job(standin, **changes):
    values = {"project": "tlp-test", "region": "europe-west4", "temp_location": "gs://tlp-bucket/runs/dataflow",
              "max_workers": 25, "machine_type": "n2-highcpu-16", "service_account": SA,
              "network": "projects/123/global/networks/vpc", "image": "us-docker.pkg.dev/tlp-test/tlp/tlp-dataflow:1",
              # localhost: the runner then talks REST to the endpoint (gRPC otherwise)
              "endpoint": standin.url.replace("127.0.0.1", "localhost"), "job_name": "tlp-data-prep-test"}
    return prepare.DataflowJob(**{**values, **changes})


def test_a_failed_dataflow_job_names_its_error_and_leaves_no_dataset(standin, tmp_path, capsys, monkeypatch):
    from apache_beam.runners.dataflow import dataflow_runner

    monkeypatch.setattr(dataflow_runner.time, "sleep", lambda seconds: None)  # the runner's polling pauses
    standin.add_bucket("tlp-bucket")
    out = tmp_path / "dataset"
    with pytest.raises(ServiceError) as failed:
        prepare.prepare_dataset("sample:10", str(out), image_size=32, seed=1, dataflow=_job(standin))
    message = str(failed.value)
    assert "Dataflow data-prep job" in message and "S01:ReadDigestEncode failed: ZeroDivisionError" in message
    assert "console.cloud.google.com/dataflow/jobs/europe-west4/" in message
    assert not out.exists() or not any(out.iterdir())  # no dataset
    assert "console.cloud.google.com/dataflow/jobs/europe-west4/" in capsys.readouterr().out

    [job] = standin.dataflow_jobs.values()
    assert job["projectId"] == "tlp-test" and job["location"] == "europe-west4"
    assert job["name"] == "tlp-data-prep-test"
    environment = job["environment"]
    assert environment["serviceAccountEmail"] == SA
    [pool] = environment["workerPools"]
    assert pool["machineType"] == "n2-highcpu-16" and pool["network"] == "vpc"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 25
    images = [image["containerImage"] for image in pool.get("sdkHarnessContainerImages", [])]
    assert "us-docker.pkg.dev/tlp-test/tlp/tlp-dataflow:1" in images
    assert environment["tempStoragePrefix"].startswith("storage.googleapis.com/tlp-bucket/runs/dataflow/temp/")
    # What the runner staged before submitting went to the stand-in's Cloud Storage.
    staged = [r.path for r in standin.find("POST", r"^/upload/storage/v1/b/tlp-bucket/o$")]
    assert staged, "nothing was staged"


def _synthetic_listing(photos: int):
    """A listing of ``photos`` files in two classes (never read: the stand-in runs no worker)."""
    from tlp.components.lib.dataprep import sources

    files = [(f"gs://photos/pets/{('cat', 'dog')[i % 2]}/IMG_{i:07d}.jpg", i % 2) for i in range(photos)]
    units = [("files", files[start : start + sources.PHOTOS_PER_UNIT])
             for start in range(0, photos, sources.PHOTOS_PER_UNIT)]
    return sources.Listing("folder:gs://photos/pets", ["cat", "dog"], units, photos)


def test_the_job_request_does_not_grow_with_the_photos(standin, tmp_path, monkeypatch):
    """Dataflow refuses a job request over about 10 MB; the workers read the listing from a file."""
    import json

    from apache_beam.runners.dataflow import dataflow_runner

    monkeypatch.setattr(dataflow_runner.time, "sleep", lambda seconds: None)
    standin.add_bucket("tlp-bucket")
    sizes, graphs = {}, {}
    for photos in (1_000, 200_000):
        with pytest.raises(ServiceError):  # the stand-in fails every job: the request is what is measured
            prepare.run_pipeline(_synthetic_listing(photos), "gs://tlp-bucket/out", image_size=32, seed=1,
                                 max_workers=8, min_shard_records=16,
                                 dataflow=_job(standin, job_name=f"tlp-data-prep-{photos}"))
        [job] = [job for job in standin.dataflow_jobs.values() if job["name"] == f"tlp-data-prep-{photos}"]
        sizes[photos] = len(json.dumps(job).encode())
        # The pipeline itself (every transform and what it pickled) is staged beside the request.
        [graphs[photos]] = [len(data) for (bucket, name), data in standin.objects.items()
                            if f"/staging/tlp-data-prep-{photos}." in name and name.endswith("/pipeline.pb")]
    print(f"job request: {sizes[1_000]:,} and {sizes[200_000]:,} bytes; staged pipeline: {graphs[1_000]:,} and "
          f"{graphs[200_000]:,} bytes (1,000 and 200,000 photos)")
    for measured in (sizes, graphs):
        assert measured[200_000] < 1_000_000
        assert abs(measured[200_000] - measured[1_000]) <= 0.10 * measured[1_000], measured
    # The listing went to the temp location for the workers, and the run removed it afterwards.
    named = [str(r.query) + str(r.body)[:300] for r in standin.find("POST", r"^/upload/storage/v1/b/tlp-bucket/o$")]
    assert any("/units.jsonl" in text for text in named), named
    assert not [name for (bucket, name) in standin.objects if bucket == "tlp-bucket" and "/prep-" in name]
