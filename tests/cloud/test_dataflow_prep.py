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
