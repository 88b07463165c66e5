"""The stand-in answers the real clients: aiplatform (REST), google-cloud-storage and kfp.Client."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from kfp import compiler, dsl

SA = "runner@tlp-test.iam.gserviceaccount.com"
IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"


@dsl.component(base_image="python:3.11")
def add(a: int, b: int) -> int:
    return a + b


@dsl.pipeline(name="tiny")
def tiny(a: int = 1, b: int = 2, note: str = "x"):
    add(a=a, b=b)


@pytest.fixture
def template(tmp_path):
    path = str(tmp_path / "tiny.yaml")
    compiler.Compiler().compile(tiny, path)
    return path


@pytest.fixture
def aiplatform(standin):
    from google.cloud import aiplatform

    aiplatform.init(project="tlp-test", location="us-central1", api_endpoint=standin.url, api_transport="rest")
    return aiplatform


def _job(aiplatform, template, **kwargs):
    return aiplatform.PipelineJob(
        display_name="tiny", template_path=template, pipeline_root="gs://tlp-runs/root",
        parameter_values={"a": 3, "note": "hi"}, labels={"team": "ml"}, enable_caching=False, **kwargs,
    )


def test_pipeline_job_submit_and_wait(standin, aiplatform, template):
    start = time.monotonic()
    job = _job(aiplatform, template)
    job.submit(service_account=SA, network="projects/123456789012/global/networks/vpc")
    assert time.monotonic() - start < 5

    (create,) = standin.find("POST", r"/pipelineJobs$")
    assert create.query["pipelineJobId"] == job.resource_name.rsplit("/", 1)[-1]
    body = create.body
    assert body["pipelineSpec"]["pipelineInfo"]["name"] == "tiny"
    # Protobuf Struct carries every number as a double.
    assert body["runtimeConfig"] == {"gcsOutputDirectory": "gs://tlp-runs/root",
                                     "parameterValues": {"a": 3.0, "note": "hi"}}
    assert body["serviceAccount"] == SA and body["labels"] == {"team": "ml"}
    assert body["network"] == "projects/123456789012/global/networks/vpc"
    # The unknown bucket was created and the run's service account may write to it.
    assert "tlp-runs" in standin.buckets
    members = {m for b in standin.bucket_policies["tlp-runs"]["bindings"] for m in b["members"]}
    assert f"serviceAccount:{SA}" in members

    job.wait()
    assert job.state.name == "PIPELINE_STATE_SUCCEEDED"
    assert standin.pipeline_jobs[job.resource_name]["state"] == "PIPELINE_STATE_SUCCEEDED"
    assert job.resource_name.startswith("projects/123456789012/locations/us-central1/pipelineJobs/")

    # The bucket exists now: the SDK checks its owner through Resource Manager, still fast.
    standin.job_final_state = "PIPELINE_STATE_FAILED"
    start = time.monotonic()
    failing = _job(aiplatform, template, job_id="tiny-second")
    failing.submit(service_account=SA)
    assert time.monotonic() - start < 5
    assert standin.find("GET", r"^/v3/projects/tlp-test$")
    with pytest.raises(RuntimeError, match="some tasks failed"):
        failing.wait()

    names = {j.resource_name for j in aiplatform.PipelineJob.list(filter='display_name="tiny"')}
    assert names == {job.resource_name, failing.resource_name}
    cancelled = _job(aiplatform, template, job_id="tiny-third")
    cancelled.submit(service_account=SA)
    cancelled.cancel()
    assert cancelled.state.name == "PIPELINE_STATE_CANCELLED"
    assert not standin.unanswered()


def test_unknown_parameter_is_refused(standin, aiplatform, template):
    from google.api_core import exceptions

    job = aiplatform.PipelineJob(display_name="tiny", template_path=template, pipeline_root="gs://tlp-runs/root",
                                 parameter_values={"a": 1}, enable_caching=False)
    job._gca_resource.runtime_config.parameter_values["nope"] = 1  # the SDK itself would refuse it
    with pytest.raises(exceptions.BadRequest, match="nope"):
        job.submit(service_account=SA)


def test_schedule_lifecycle(standin, aiplatform, template):
    job = _job(aiplatform, template)
    schedule = job.create_schedule(
        cron="TZ=Europe/Paris 0 3 * * 1", display_name="weekly", max_concurrent_run_count=1, max_run_count=4,
        start_time="2030-01-01T00:00:00Z", end_time="2030-06-01T00:00:00Z", service_account=SA,
        network="projects/123456789012/global/networks/vpc",
    )
    stored = standin.schedules[schedule.resource_name]
    assert stored["cron"] == "TZ=Europe/Paris 0 3 * * 1"
    assert (stored["maxConcurrentRunCount"], stored["maxRunCount"]) == ("1", "4")  # int64 travels as a string
    assert (stored["startTime"], stored["endTime"]) == ("2030-01-01T00:00:00Z", "2030-06-01T00:00:00Z")
    pipeline_job = stored["createPipelineJobRequest"]["pipelineJob"]
    assert pipeline_job["serviceAccount"] == SA and pipeline_job["labels"] == {"team": "ml"}

    listed = aiplatform.PipelineJobSchedule.list(filter='display_name="weekly"')
    assert [s.resource_name for s in listed] == [schedule.resource_name]
    assert aiplatform.PipelineJobSchedule.list(filter='display_name="other"') == []

    schedule.pause()
    assert standin.schedules[schedule.resource_name]["state"] == "PAUSED"
    again = aiplatform.PipelineJobSchedule.get(schedule.resource_name)
    assert again.state.name == "PAUSED"
    again.resume()
    assert standin.schedules[schedule.resource_name]["state"] == "ACTIVE"
    again.update(cron="0 4 * * 1", max_run_count=8)
    assert (stored["cron"], stored["maxRunCount"]) == ("0 4 * * 1", "8")
    assert standin.find("PATCH", "/schedules/")[0].query["updateMask"] == "cron,maxRunCount"
    again.delete()
    assert standin.schedules == {}
    assert not standin.unanswered()


def test_model_versions_and_aliases(standin, aiplatform, tmp_path):
    first = aiplatform.Model.upload(
        display_name="cats", artifact_uri="gs://models/cats/1", serving_container_image_uri=IMAGE,
        labels={"accuracy": "0_97"}, version_description="first",
    )
    assert first.version_id == "1" and "default" in first.version_aliases
    model_id = first.resource_name.rsplit("/", 1)[-1]

    local = tmp_path / "saved"
    (local / "variables").mkdir(parents=True)
    (local / "saved_model.pb").write_bytes(b"graph")
    (local / "variables" / "variables.index").write_bytes(b"index")
    standin.add_bucket("staging")
    second = aiplatform.Model.upload(
        display_name="cats", artifact_uri=str(local), serving_container_image_uri=IMAGE,
        parent_model=first.resource_name, is_default_version=False, version_aliases=["challenger"],
        labels={"accuracy": "0_98"}, staging_bucket="gs://staging",
    )
    assert second.resource_name == first.resource_name and second.version_id == "2"
    assert set(standin.models[model_id]["versions"]) == {"1", "2"}
    # A local directory is staged in the bucket first; the model points there.
    staged = standin.models[model_id]["versions"]["2"]["artifactUri"]
    assert staged.startswith("gs://staging/vertex_ai_auto_staging/")
    assert standin.get_object(staged.rstrip("/") + "/saved_model.pb") == b"graph"

    (listed,) = aiplatform.Model.list(filter='display_name="cats"')
    assert listed.version_id == "1"  # the list shows the default version
    assert aiplatform.Model(model_name=f"{first.resource_name}@challenger").version_id == "2"
    assert aiplatform.Model(model_name=model_id, version="2").labels == {"accuracy": "0_98"}

    registry = aiplatform.models.ModelRegistry(first.resource_name)
    registry.add_version_aliases(["champion", "default"], version="2")
    registry.add_version_aliases(["champion"], version="1")  # an alias moves to the version given
    versions = {v.version_id: set(v.version_aliases) for v in registry.list_versions()}
    assert versions == {"1": {"champion"}, "2": {"challenger", "default"}}
    registry.remove_version_aliases(["challenger"], version="2")
    assert standin.models[model_id]["versions"]["2"]["versionAliases"] == ["default"]
    assert aiplatform.Model(model_name=model_id).version_id == "2"
    assert [v.version_id for v in registry.list_versions(filter='labels.accuracy="0_97"')] == ["1"]
    assert standin.find("POST", rf"models/{model_id}@1:mergeVersionAliases$")
    assert not standin.unanswered()


def test_storage_round_trip(standin, tmp_path):
    from google.cloud import storage

    client = storage.Client(project="tlp-test")
    bucket = client.create_bucket("data", location="us-central1")
    source = tmp_path / "in.bin"
    source.write_bytes(bytes(range(256)) * 4000)  # ~1 MB
    bucket.blob("photos/cats/1.bin").upload_from_filename(str(source))
    with open(source, "rb") as stream:  # no size given: a resumable upload, here in 256 KiB chunks
        bucket.blob("photos/dogs/1.bin", chunk_size=256 * 1024).upload_from_file(stream)
    bucket.blob("other.txt").upload_from_string("hello")

    assert [b.name for b in client.list_blobs("data", prefix="photos/")] == ["photos/cats/1.bin", "photos/dogs/1.bin"]
    target = tmp_path / "out.bin"
    client.bucket("data").blob("photos/dogs/1.bin").download_to_filename(str(target))
    assert target.read_bytes() == source.read_bytes()
    assert client.bucket("data").get_blob("other.txt").size == 5
    assert standin.objects[("data", "other.txt")] == b"hello"
    assert standin.find("POST", r"^/upload/storage/v1/b/data/o$")[1].query["uploadType"] == "resumable"
    assert len(standin.find("PUT", r"^/upload/storage/v1/b/data/o$")) == 4
    assert not client.bucket("missing").exists()


def test_subprocesses_inherit_the_stand_in(standin):
    standin.put_object("gs://data/hello.txt", b"hello")
    code = ("from google.cloud import storage; "
            "print(storage.Client().bucket('data').blob('hello.txt').download_as_bytes().decode())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "hello"
    assert standin.find("GET", r"^/download/storage/v1/b/data/o/hello.txt$")


def test_kfp_run_and_recurring_run(standin, template):
    import kfp

    client = kfp.Client(host=standin.url)
    result = client.create_run_from_pipeline_package(
        template, arguments={"a": 5}, run_name="tiny-run", experiment_name="tlp", enable_caching=False,
    )
    run = standin.kfp_runs[result.run_id]
    assert run["display_name"] == "tiny-run" and run["runtime_config"]["parameters"] == {"a": 5}
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "tiny"
    assert client.wait_for_run_completion(result.run_id, timeout=10).state == "SUCCEEDED"
    assert client.get_run(result.run_id).display_name == "tiny-run"

    client.create_experiment("other")
    experiment = client.get_experiment(experiment_name="tlp")
    assert experiment.experiment_id == run["experiment_id"]
    recurring = client.create_recurring_run(
        experiment_id=experiment.experiment_id, job_name="nightly", cron_expression="0 0 3 * * *",
        pipeline_package_path=template, params={"b": 7}, max_concurrency=1,
        start_time="2030-01-01T00:00:00Z", end_time="2030-06-01T00:00:00Z", enabled=True,
    )
    stored = standin.kfp_recurring_runs[recurring.recurring_run_id]
    assert stored["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *" and stored["status"] == "ENABLED"
    listed = client.list_recurring_runs(experiment_id=experiment.experiment_id).recurring_runs
    assert [r.display_name for r in listed] == ["nightly"]
    client.disable_recurring_run(recurring.recurring_run_id)
    assert client.get_recurring_run(recurring.recurring_run_id).status == "DISABLED"
    client.enable_recurring_run(recurring.recurring_run_id)
    assert stored["status"] == "ENABLED"
    client.delete_recurring_run(recurring.recurring_run_id)
    assert standin.kfp_recurring_runs == {}
    assert not standin.unanswered()


def test_unknown_path_is_a_recorded_google_error(standin):
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{standin.url}/v1/projects/tlp-test/locations/us-central1/nothing")
    assert caught.value.code == 404
    assert json.loads(caught.value.read())["error"]["status"] == "NOT_FOUND"
    assert [r.path for r in standin.unanswered()] == ["/v1/projects/tlp-test/locations/us-central1/nothing"]
