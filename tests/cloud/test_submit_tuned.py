"""`tlp submit --tune`: the spec that reaches the stand-in fans the trials out with a ParallelFor,
each trial on the fine-tuning hardware."""

import json

import pytest

from tests.cloud.test_submit import SA, _executor, _tasks, _vertex
from tlp.pipelines import cli

GRID = "fine_tune_at=40,50 learning_rate=1e-4,3e-5"


def _loop(spec: dict) -> dict:
    [loop] = [task for task in _tasks(spec).values() if task.get("parameterIterator")]
    return loop


def test_submit_tune_sends_a_parallel_for_of_trials_on_the_gpus_with_retries(standin, capsys):
    code = cli.main(["submit", *_vertex(standin), "--service-account", SA, "--tune", GRID,
                     "--tune-parallelism", "3", "--gpus", "2", "--accelerator", "NVIDIA_L4", "--retries", "3"])
    assert code == 0, capsys.readouterr()
    spec = standin.find("POST", r"/pipelineJobs$")[0].body["pipelineSpec"]
    loop = _loop(spec)
    assert int(loop["iteratorPolicy"]["parallelismLimit"]) == 3
    items = loop["parameterIterator"]["items"]["raw"]
    assert json.loads(items) == [
        {"fine_tune_at": 40, "learning_rate": 1e-4}, {"fine_tune_at": 40, "learning_rate": 3e-5},
        {"fine_tune_at": 50, "learning_rate": 1e-4}, {"fine_tune_at": 50, "learning_rate": 3e-5},
    ]
    tasks = _tasks(spec)
    trial = tasks["fine-tuning-trial"]
    assert int(trial["retryPolicy"]["maxRetryCount"]) == 3
    assert int(tasks["feature-extraction-heads"]["retryPolicy"]["maxRetryCount"]) == 3
    # Every model pass on the GPUs (issue 29): the heads' forward pass, the trials, evaluation, registration.
    for step in ("feature-extraction-heads", "fine-tuning-trial", "evaluation", "registration"):
        container = _executor(spec, step)["container"]
        assert container["resources"]["accelerator"]["type"] == "NVIDIA_L4", step
        assert int(container["resources"]["accelerator"]["count"]) == 2, step
        assert container["image"].endswith("/tlp-train:0.1.0"), step
    # One feature extraction (no head option tuned), the selection after the loop, evaluation on its model.
    assert "feature-extraction" not in tasks and "fine-tuning" not in tasks
    assert tasks["trial-selection"]["inputs"]["artifacts"]["trials"]
    evaluation = tasks["evaluation"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
    assert evaluation["producerTask"] == "trial-selection"


def test_spot_trials_run_as_custom_jobs(standin, capsys):
    code = cli.main(["submit", *_vertex(standin), "--service-account", SA, "--tune", GRID, "--spot",
                     "--gpus", "1", "--accelerator", "NVIDIA_L4", "--machine-type", "g2-standard-8"])
    assert code == 0, capsys.readouterr()
    spec = standin.find("POST", r"/pipelineJobs$")[0].body["pipelineSpec"]
    assert int(_loop(spec)["iteratorPolicy"]["parallelismLimit"]) == 4  # the default
    component = _tasks(spec)["fine-tuning-trial"]["componentRef"]["name"]
    inputs = spec["components"][component]["inputDefinitions"]["parameters"]
    assert inputs["strategy"]["defaultValue"] == "SPOT"
    [pool] = inputs["worker_pool_specs"]["defaultValue"]
    assert pool["machine_spec"] == {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4",
                                    "accelerator_count": 1}


def _constant(task: dict, name: str):
    return task["inputs"]["parameters"][name]["runtimeValue"]["constant"]


def test_submit_tuner_vizier_sends_a_hyperparameter_tuning_job_over_the_same_space(standin, capsys):
    code = cli.main(["submit", *_vertex(standin), "--service-account", SA, "--tune", GRID, "--tuner", "vizier",
                     "--tune-trials", "3", "--tune-parallelism", "2", "--gpus", "1", "--accelerator", "NVIDIA_L4",
                     "--image-repo", "us-docker.pkg.dev/tlp-test/tlp", "--image-tag", "1.2.3"])
    assert code == 0, capsys.readouterr()
    spec = standin.find("POST", r"/pipelineJobs$")[0].body["pipelineSpec"]
    tasks = _tasks(spec)
    job = tasks["hyperparameter-tuning-job"]
    assert int(_constant(job, "max_trial_count")) == 3 and int(_constant(job, "parallel_trial_count")) == 2
    # Vertex fails the job on seeing max_failed_trial_count failed trials: --retries 2 (the default) lets 2 fail.
    assert int(_constant(job, "max_failed_trial_count")) == 3
    # GCPC's serialize_metrics writes the enum as its number: MAXIMIZE is 1.
    assert _constant(job, "study_spec_metrics") == [{"metric_id": "val_accuracy", "goal": 1}]
    space = {p["parameter_id"]: p["discrete_value_spec"]["values"] for p in _constant(job, "study_spec_parameters")}
    assert space == {"fine_tune_at": [40.0, 50.0], "learning_rate": [1e-4, 3e-5]}
    assert _constant(job, "location") == "us-central1" and _constant(job, "service_account") == SA
    assert "hyperparameter_tuning_job.launcher" in " ".join(_executor(spec, "hyperparameter-tuning-job")
                                                            ["container"]["command"])
    # The trials' worker pool: our training image running one trial on this run's data and heads.
    pools = tasks["vizier-worker-pools"]
    assert job["inputs"]["parameters"]["worker_pool_specs"]["taskOutputParameter"]["producerTask"] == \
        "vizier-worker-pools"
    assert _constant(pools, "image") == "us-docker.pkg.dev/tlp-test/tlp/tlp-train:1.2.3"
    assert _constant(pools, "accelerator_type") == "NVIDIA_L4" and int(_constant(pools, "accelerator_count")) == 1
    assert pools["inputs"]["artifacts"]["heads"]["taskOutputArtifact"]["producerTask"] == "feature-extraction-heads"
    assert tasks["evaluation"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == \
        "vizier-selection"
    assert int(_constant(tasks["vizier-selection"], "expected_trials")) == 3  # so it can say how many failed


def _tuning_job_request(spec: dict):
    """The HyperparameterTuningJob that GCPC's launcher creates from this spec (it runs inside
    Vertex AI, so the stand-in never sees that request): the launcher's --payload template with the
    task's inputs filled in, parsed as the API's own message. The worker pools, another step's
    output, are left empty."""
    import re

    from google.cloud.aiplatform_v1.types import HyperparameterTuningJob

    task = _tasks(spec)["hyperparameter-tuning-job"]
    component = spec["components"][task["componentRef"]["name"]]
    args = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]["args"]
    defaults = component["inputDefinitions"]["parameters"]

    def fill(part: str) -> str:
        found = re.fullmatch(r"\{\{\$\.inputs\.parameters\['(\w+)'\]\}\}", part)
        if not found:
            return part
        given = task["inputs"]["parameters"].get(found.group(1), {})
        value = given["runtimeValue"]["constant"] if "runtimeValue" in given else (
            [] if "taskOutputParameter" in given else defaults[found.group(1)].get("defaultValue"))
        if isinstance(value, (list, dict)):
            return json.dumps(value)
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    payload = json.loads(args[args.index("--payload") + 1])
    return HyperparameterTuningJob.from_json("".join(fill(part) for part in payload["Concat"]))


@pytest.mark.parametrize("retries, limit", [(0, 1), (1, 2)])
def test_vizier_retries_are_failed_trials_the_job_survives(standin, capsys, retries, limit):
    # Vertex fails the job on seeing max_failed_trial_count failed trials (0 would let Vertex AI decide):
    # --retries 1 must survive one failed trial, not end at it.
    code = cli.main(["submit", *_vertex(standin), "--tune", GRID, "--tuner", "vizier", "--tune-trials", "3",
                     "--retries", str(retries)])
    assert code == 0, capsys.readouterr()
    job = _tuning_job_request(standin.find("POST", r"/pipelineJobs$")[0].body["pipelineSpec"])
    assert job.max_failed_trial_count == limit
    assert job.max_trial_count == 3
    assert [parameter.parameter_id for parameter in job.study_spec.parameters] == ["fine_tune_at", "learning_rate"]
    assert [metric.metric_id for metric in job.study_spec.metrics] == ["val_accuracy"]


def test_vizier_over_many_head_settings_trains_no_head_ahead(standin, capsys):
    # 64 head settings (8 dropouts x 8 epochs), 3 trials: the heads step trained all 64 before.
    space = "dropout=" + ",".join(f"0.{n}" for n in range(1, 9)) + " epochs=" + ",".join(map(str, range(1, 9)))
    code = cli.main(["submit", *_vertex(standin), "--tune", space, "--tuner", "vizier", "--tune-trials", "3"])
    assert code == 0, capsys.readouterr()
    heads = _tasks(standin.find("POST", r"/pipelineJobs$")[0].body["pipelineSpec"])["feature-extraction-heads"]
    assert _constant(heads, "head_settings") == []


def test_vizier_worker_pool_runs_the_trial_entry_point_on_the_runs_artifacts():
    from kfp import dsl

    from tlp.components.tuning import vizier_worker_pools

    dataset, heads = dsl.Dataset(uri="gs://b/run/data-prep/dataset"), dsl.Model(uri="gs://b/run/heads")
    [pool] = vizier_worker_pools.python_func(dataset, heads, {"seed": 1}, "img:1", "g2-standard-8", "NVIDIA_L4", 1)
    assert pool["machine_spec"] == {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4",
                                    "accelerator_count": 1}
    container = pool["container_spec"]
    assert container["image_uri"] == "img:1"
    assert container["command"] == ["python", "-m", "tlp.components.vizier_trial"]
    assert container["args"] == ["--dataset", "gs://b/run/data-prep/dataset", "--heads", "gs://b/run/heads",
                                 "--options", '{"seed": 1}']
