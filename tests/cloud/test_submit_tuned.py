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
    container = _executor(spec, "fine-tuning-trial")["container"]
    assert container["resources"]["accelerator"]["type"] == "NVIDIA_L4"
    assert int(container["resources"]["accelerator"]["count"]) == 2
    assert container["image"].endswith("/tlp-train:0.1.0")
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
