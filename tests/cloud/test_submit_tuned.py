"""`tlp submit --tune`: the spec that reaches the stand-in fans the trials out with a ParallelFor,
each trial on the fine-tuning hardware."""

import json

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
