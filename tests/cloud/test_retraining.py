"""Scheduled retraining that sees new data: the compiled pipeline `tlp submit` and `tlp schedule
create` send (Vertex AI and Kubeflow Pipelines) never lets a run reuse an old data set because
its parameters look the same; training steps retry on Vertex AI and fine-tuning can run on Spot
VMs; a refused GPU quota or a stock-out ends in one sentence."""

import pytest

from tests.cloud.test_submit import SA, SMALL, _executor, _tasks, _vertex
from tlp.components.lib.fingerprint import fingerprint_source
from tlp.pipelines import cli

FINGERPRINT, PREP = "data-fingerprint", "data-prep"


def _cached(task: dict) -> bool:
    return bool(task.get("cachingOptions", {}).get("enableCache"))


def _upstream(task: dict) -> set[str]:
    """The tasks whose outputs (or completion) this task waits for."""
    found = set(task.get("dependentTasks", []))
    for kind in ("artifacts", "parameters"):
        for value in task.get("inputs", {}).get(kind, {}).values():
            for key in ("taskOutputArtifact", "taskOutputParameter"):
                if key in value:
                    found.add(value[key]["producerTask"])
    return found


def assert_sees_new_data(spec: dict) -> None:
    """The fingerprint step is never cached and feeds data prep, and every cached step waits, through
    its inputs, for that step: so no path runs on cached steps alone, every root task is uncached."""
    root = spec["root"]["dag"]["tasks"]
    tasks = _tasks(spec)
    assert not _cached(tasks[FINGERPRINT]), tasks[FINGERPRINT].get("cachingOptions")
    fed = tasks[PREP]["inputs"]["parameters"]["source_fingerprint"]["taskOutputParameter"]
    assert fed == {"outputParameterKey": "fingerprint", "producerTask": FINGERPRINT}
    upstream = {name: _upstream(task) for name, task in root.items()}
    roots = [name for name, ups in upstream.items() if not ups]
    assert roots == [FINGERPRINT], roots
    assert all(not _cached(root[name]) for name in roots)

    def reaches_fingerprint(name, seen=()):
        return name == FINGERPRINT or any(reaches_fingerprint(up, (*seen, name)) for up in upstream[name]
                                          if up not in seen)

    for name, task in root.items():
        if _cached(task):
            assert reaches_fingerprint(name), f"{name} is cached and does not depend on the fingerprint"
    # The steps after data prep are cached (that is what makes a run on unchanged data cheap).
    assert all(_cached(root[name]) for name in (PREP, "data-checks", "feature-extraction", "fine-tuning"))


def test_submit_and_schedule_create_on_vertex_keep_the_per_task_caching(standin, capsys):
    assert cli.main(["submit", *_vertex(standin), "--service-account", SA]) == 0, capsys.readouterr()
    [create] = standin.find("POST", r"/pipelineJobs$")
    assert_sees_new_data(create.body["pipelineSpec"])

    assert cli.main(["schedule", "create", *_vertex(standin), "--service-account", SA, "--cron", "0 3 * * 1",
                     "--name", "weekly"]) == 0, capsys.readouterr()
    [schedule] = standin.find("POST", r"/schedules$")
    assert_sees_new_data(schedule.body["createPipelineJobRequest"]["pipelineJob"]["pipelineSpec"])


def test_submit_and_recurring_run_on_kubeflow_keep_the_per_task_caching(standin, capsys):
    common = ["--kfp-host", standin.url, *SMALL, "--registry", "http://mlflow.internal:5000"]
    assert cli.main(["submit", *common]) == 0, capsys.readouterr()
    [run] = standin.kfp_runs.values()
    assert_sees_new_data(run["pipeline_spec"])
    assert cli.main(["schedule", "create", *common, "--cron", "0 3 * * 1", "--name", "weekly"]) == 0
    [recurring] = standin.kfp_recurring_runs.values()
    assert_sees_new_data(recurring["pipeline_spec"])


def test_no_cache_still_runs_every_step(standin, capsys):
    common = ["--kfp-host", standin.url, *SMALL, "--registry", "http://mlflow.internal:5000", "--no-cache"]
    assert cli.main(["submit", *common]) == 0, capsys.readouterr()
    [run] = standin.kfp_runs.values()
    assert not any(_cached(task) for task in run["pipeline_spec"]["root"]["dag"]["tasks"].values())
    assert cli.main(["submit", *_vertex(standin), "--no-cache"]) == 0
    spec = standin.find("POST", r"/pipelineJobs$")[0].body["pipelineSpec"]
    assert not any(_cached(task) for task in _tasks(spec).values())


def test_a_run_on_unchanged_data_says_so(standin, capsys):
    standin.job_task_details = [
        {"taskName": FINGERPRINT, "state": "SUCCEEDED", "execution": {"state": "COMPLETE"}},
        *({"taskName": name, "state": "SKIPPED", "execution": {"state": "CACHED"}}
          for name in (PREP, "data-checks", "feature-extraction", "fine-tuning", "evaluation", "registration")),
    ]
    assert cli.main(["submit", *_vertex(standin), "--wait"]) == 0
    out = capsys.readouterr().out
    assert "data unchanged since an earlier run (same source fingerprint): data-prep, data-checks, " \
           "feature-extraction, fine-tuning, evaluation, registration came from the cache" in out


def test_training_steps_retry_and_fine_tuning_runs_on_spot_vms(standin, capsys):
    assert cli.main(["submit", *_vertex(standin), "--service-account", SA, "--spot", "--gpus", "1",
                     "--accelerator", "NVIDIA_L4", "--retries", "3"]) == 0, capsys.readouterr()
    spec = standin.find("POST", r"/pipelineJobs$")[0].body["pipelineSpec"]
    tasks = _tasks(spec)
    for name in ("feature-extraction", "fine-tuning"):
        assert int(tasks[name]["retryPolicy"]["maxRetryCount"]) == 3
    assert "retryPolicy" not in tasks[PREP]
    assert "google-cloud-pipeline-components" in _executor(spec, "fine-tuning")["container"]["image"]
    component = spec["components"][tasks["fine-tuning"]["componentRef"]["name"]]
    inputs = component["inputDefinitions"]["parameters"]
    assert inputs["strategy"]["defaultValue"] == "SPOT"
    assert inputs["worker_pool_specs"]["defaultValue"][0]["machine_spec"]["accelerator_type"] == "NVIDIA_L4"


@pytest.mark.parametrize("message, says", [
    ("The following quota metrics exceed quota limits: aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus",
     "the project's quota is too small"),
    ("Resources are insufficient in region: us-central1. Please try a different region.", "none were free there"),
])
def test_a_refused_gpu_quota_or_a_stockout_ends_in_one_sentence(standin, capsys, message, says):
    standin.job_final_state = "PIPELINE_STATE_FAILED"
    standin.job_error_message = message
    code = cli.main(["submit", *_vertex(standin), "--gpus", "2", "--accelerator", "NVIDIA_L4", "--wait"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    last = err[-1]
    assert last.startswith("tlp: error: fine-tuning could not get 2 NVIDIA_L4 GPU(s) in us-central1: ") and says in last
    assert "--region" in last and "--accelerator" in last and "--spot" in last
    assert sum(line.startswith("tlp: error:") for line in err) == 1


def test_the_failed_tasks_error_is_read_when_the_jobs_is_generic(standin, capsys):
    standin.job_final_state = "PIPELINE_STATE_FAILED"
    standin.job_error_message = "The DAG failed because some tasks failed. The failed tasks are: [fine-tuning]."
    standin.job_task_details = [{"taskName": "fine-tuning", "state": "FAILED", "error": {
        "code": 8, "message": "The zone 'us-central1-a' does not have enough resources available to fulfill the "
                              "request. Try a different zone, or try again later."}}]
    code = cli.main(["submit", *_vertex(standin), "--gpus", "1", "--accelerator", "NVIDIA_TESLA_T4", "--spot",
                     "--wait"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "fine-tuning could not get 1 NVIDIA_TESLA_T4 GPU(s) in us-central1: none were free" in last
    assert "--spot draws" not in last  # already on Spot VMs


def test_the_fingerprint_of_a_bucket_changes_with_one_object(standin):
    for name in ("cat/1.jpg", "cat/2.jpg", "dog/1.jpg", "dog/notes.txt", "readme.md"):
        standin.put_object(f"gs://photos/pets/{name}", b"bytes of " + name.encode())
    first = fingerprint_source("folder:gs://photos/pets")
    assert first.files == 3 and first == fingerprint_source("folder:gs://photos/pets")
    standin.put_object("gs://photos/pets/dog/1.jpg", b"bytes of dog/1.jpg")  # same bytes, a new generation
    again = fingerprint_source("folder:gs://photos/pets")
    assert again.fingerprint != first.fingerprint and again.files == 3
    standin.put_object("gs://photos/other/x.jpg", b"elsewhere")  # outside the folder: no change
    assert fingerprint_source("folder:gs://photos/pets") == again
