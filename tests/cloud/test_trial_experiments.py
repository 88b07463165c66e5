"""A tuned run's trials as Vertex AI Experiments runs: the selection components (grid and Vizier),
called with real kfp artifacts over fabricated trial directories, log through the real
google-cloud-aiplatform client to the stand-in; the tests assert the requests that reached it."""

import json
import os

import pytest
import yaml
from kfp import dsl

from tests.cloud.test_submit import SA, _tasks, _vertex
from tlp.components.lib.specs import ConfigError, ServiceError
from tlp.components.lib.tuning_runs import TRIAL_FILE
from tlp.components.lib.vertex_experiments import MAX_RUN_ID_LENGTH, run_names
from tlp.components.tuning import trial_selection, vizier_selection
from tlp.pipelines import cli

JOB_ID = "transfer-learning-20261207120000"
EXPERIMENT = "cats-weekly"
STORE = "projects/123456789012/locations/us-central1/metadataStores/default"
# Each trial's tuned values and final validation; the third is the best (the second ties its
# accuracy, with a higher loss).
TRIALS = [
    ({"fine_tune_at": 60, "learning_rate": 1e-4}, 0.81, 0.52, 30.5),
    ({"fine_tune_at": 60, "learning_rate": 3e-5}, 0.90, 0.41, 31.0),
    ({"fine_tune_at": 100, "learning_rate": 1e-4}, 0.90, 0.33, 25.2),
]


def _trial_dir(path, params, val_accuracy, val_loss, seconds) -> str:
    """What ``run_trial`` leaves: a servable model directory (a stand-in file here) with trial.json."""
    os.makedirs(path)
    with open(os.path.join(path, "saved_model.pb"), "w") as handle:
        handle.write(json.dumps(params))
    record = {"params": params, "val_accuracy": val_accuracy, "val_loss": val_loss, "seconds": seconds,
              "replicas": 1, "history": {"epoch": [1], "val_accuracy": [val_accuracy]},
              "feature_history": {"epoch": [1], "val_accuracy": [0.7]}}
    with open(os.path.join(path, TRIAL_FILE), "w") as handle:
        json.dump(record, handle)
    return str(path)


def _outputs(root) -> dict:
    return {name: cls(name=name, uri=os.path.join(str(root), "selection", name), metadata={})
            for name, cls in (("model", dsl.Model), ("history", dsl.Artifact), ("feature_history", dsl.Artifact),
                              ("tuning", dsl.Artifact))}


def _experiment_parameters(standin) -> dict:
    return {"project": "tlp-test", "location": "us-central1", "experiment": EXPERIMENT, "api_endpoint": standin.url,
            "pipeline_job_id": JOB_ID}


def _logged_runs(standin) -> dict:
    """Run name -> (the context the SDK created, the parent it was added to, the last metadata it sent)."""
    runs = {}
    for create in standin.find("POST", r"/metadataStores/default/contexts$"):
        if create.body["schemaTitle"] != "system.ExperimentRun":
            continue
        name = f"{STORE}/contexts/{create.query['contextId']}"
        [link] = [r for r in standin.find("POST", r":addContextChildren$") if r.body["childContexts"] == [name]]
        updates = standin.find("PATCH", "/" + name + "$")
        runs[create.body["displayName"]] = (create, link.path.removeprefix("/v1/").removesuffix(":addContextChildren"),
                                            updates[-1].body["metadata"])
    return runs


def _assert_one_run_per_trial(standin, trials=TRIALS, best_index=2):
    runs = _logged_runs(standin)
    ordered = sorted(trials, key=lambda t: [str(t[0][name]) for name in sorted(t[0])])  # the selection's order
    assert sorted(runs) == [f"{JOB_ID}-trial-{index}" for index in range(len(trials))]
    for index, (params, val_accuracy, val_loss, seconds) in enumerate(ordered):
        create, parent, metadata = runs[f"{JOB_ID}-trial-{index}"]
        assert create.query["contextId"] == f"{EXPERIMENT}-{JOB_ID}-trial-{index}"
        assert create.body["metadata"]["_state"] == "RUNNING"
        assert parent == f"{STORE}/contexts/{EXPERIMENT}"
        assert metadata["_params"] == {**params,
                                       "pipeline_job": f"projects/tlp-test/locations/us-central1/pipelineJobs/{JOB_ID}"}
        assert metadata["_metrics"] == {"val_accuracy": val_accuracy, "val_loss": val_loss, "seconds": seconds,
                                        "best": int(params == trials[best_index][0])}
        assert metadata["_state"] == "COMPLETE"
    assert sum(metadata["_metrics"]["best"] for _, _, metadata in runs.values()) == 1
    assert not standin.unanswered(), standin.dump()


def test_trial_selection_logs_each_trial_as_a_run_of_the_experiment(standin, tmp_path, capsys):
    trials = [dsl.Model(name="model", uri=_trial_dir(tmp_path / f"trial-{index}", *trial), metadata={})
              for index, trial in enumerate(TRIALS)]
    outputs = _outputs(tmp_path)
    result = trial_selection.python_func(trials=trials, **outputs, **_experiment_parameters(standin))

    assert json.loads(result.best) == TRIALS[2][0]
    assert (tmp_path / "selection" / "model" / "saved_model.pb").read_text() == json.dumps(TRIALS[2][0])
    # The experiment existed already (tlp submit made it); the trials' runs went into it.
    [experiment] = [r for r in standin.find("POST", r"/contexts$") if r.body["schemaTitle"] == "system.Experiment"]
    assert experiment.query["contextId"] == EXPERIMENT
    _assert_one_run_per_trial(standin)
    # No backing TensorBoard was looked up or created for the experiment.
    assert not standin.find("GET", r"/tensorboards") and not standin.find("POST", r"/tensorboards")
    assert f"3 trials logged to Vertex AI Experiments {EXPERIMENT}" in capsys.readouterr().out


def test_vizier_selection_logs_the_tuning_jobs_trials(standin, tmp_path):
    root = tmp_path / "fine-tuning-trials"
    for index, trial in enumerate(TRIALS[:2]):  # Vizier's trial IDs name the directories
        _trial_dir(root / str(index + 1) / "model", *trial)
    result = vizier_selection.python_func(trials_root=str(root), **_outputs(tmp_path),
                                          **_experiment_parameters(standin))
    assert json.loads(result.best) == TRIALS[1][0]
    _assert_one_run_per_trial(standin, TRIALS[:2], best_index=1)


def test_vizier_selection_says_how_many_trials_failed(tmp_path, capsys):
    root = tmp_path / "fine-tuning-trials"
    for index, trial in enumerate(TRIALS[:2]):  # the job ran 3; the third failed (--retries allowed it)
        _trial_dir(root / str(index + 1) / "model", *trial)
    outputs = _outputs(tmp_path)
    result = vizier_selection.python_func(trials_root=str(root), expected_trials=3, **outputs)
    assert json.loads(result.best) == TRIALS[1][0]
    assert "1 of 3 trials failed and left no model" in capsys.readouterr().out
    assert outputs["tuning"].metadata["failed_trials"] == 1 and outputs["tuning"].metadata["trials"] == 2


def test_without_an_experiment_nothing_is_logged(standin, tmp_path):
    trials = [dsl.Model(name="model", uri=_trial_dir(tmp_path / f"trial-{index}", *trial), metadata={})
              for index, trial in enumerate(TRIALS)]
    trial_selection.python_func(trials=trials, **_outputs(tmp_path))  # a local run's defaults
    assert not standin.requests


def test_a_refused_request_fails_the_step_naming_the_role_to_grant(standin, tmp_path):
    trials = [dsl.Model(name="model", uri=_trial_dir(tmp_path / "trial-0", *TRIALS[0]), metadata={})]
    # The stand-in answers 403 for any project but its own, as Vertex AI does without the permission.
    parameters = {**_experiment_parameters(standin), "project": "someone-elses"}
    with pytest.raises(ServiceError) as raised:
        trial_selection.python_func(trials=trials, **_outputs(tmp_path), **parameters)
    message = str(raised.value)
    assert "Vertex AI Experiments refused experiment cats-weekly in someone-elses/us-central1" in message
    assert "permission denied" in message and "roles/aiplatform.user" in message
    assert "the trials come from the cache" in message and message.endswith(".")
    assert "http://" not in message  # the request's URL is left out, the reason kept


def test_an_experiment_without_its_project_is_refused_before_any_request(standin, tmp_path):
    trials = [dsl.Model(name="model", uri=_trial_dir(tmp_path / "trial-0", *TRIALS[0]), metadata={})]
    with pytest.raises(ConfigError, match="without project, pipeline_job_id"):
        trial_selection.python_func(trials=trials, **_outputs(tmp_path), location="us-central1", experiment=EXPERIMENT)
    assert not standin.requests


def test_run_names_fit_the_sdks_limit_keeping_the_job_ids_time():
    assert run_names(EXPERIMENT, JOB_ID, 2) == [f"{JOB_ID}-trial-0", f"{JOB_ID}-trial-1"]
    long = "e" * 90
    [name] = run_names(long, JOB_ID, 1)
    assert len(f"{long}-{name}") <= MAX_RUN_ID_LENGTH and name.endswith("20261207120000-trial-0")
    with pytest.raises(ConfigError, match="at most 98 characters"):
        run_names("e" * 110, JOB_ID, 1)


# --- what tlp submit and tlp compile put in the selection step ----------------------------------

GRID = "fine_tune_at=40,50 learning_rate=1e-4,3e-5"
EXPERIMENT_INPUTS = ("project", "location", "experiment", "api_endpoint", "pipeline_job_id")


def _selection_inputs(spec: dict, task: str) -> dict:
    parameters = _tasks(spec)[task]["inputs"]["parameters"]
    return {name: parameters[name]["runtimeValue"]["constant"] for name in EXPERIMENT_INPUTS}


@pytest.mark.parametrize("tuner, task", [(["--tuner", "grid"], "trial-selection"),
                                         (["--tuner", "vizier", "--tune-trials", "3"], "vizier-selection")])
def test_submit_tune_tells_the_selection_the_runs_experiment_and_job(standin, capsys, tuner, task):
    code = cli.main(["submit", *_vertex(standin), "--service-account", SA, "--tune", GRID, *tuner,
                     "--experiment", EXPERIMENT])
    out = capsys.readouterr().out
    assert code == 0, out
    spec = standin.find("POST", r"/pipelineJobs$")[0].body["pipelineSpec"]
    assert _selection_inputs(spec, task) == {
        "project": "tlp-test", "location": "us-central1", "experiment": EXPERIMENT, "api_endpoint": standin.url,
        "pipeline_job_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,  # Vertex AI puts the job's ID in at run time
    }
    job_id = next(iter(standin.pipeline_jobs)).rsplit("/", 1)[-1]
    last = 2 if "vizier" in tuner else 3
    assert f"trials: runs {job_id}-trial-0 .. {job_id}-trial-{last} of that experiment" in out


def test_submit_tune_without_experiment_logs_to_the_pipelines_name(standin, capsys):
    assert cli.main(["submit", *_vertex(standin), "--service-account", SA, "--tune", GRID]) == 0, capsys.readouterr()
    spec = standin.find("POST", r"/pipelineJobs$")[0].body["pipelineSpec"]
    assert _selection_inputs(spec, "trial-selection")["experiment"] == "transfer-learning"


def test_an_experiment_name_too_long_for_the_trials_run_names_is_refused_before_submitting(standin, capsys):
    long = "cats-" + "e" * 100  # a valid experiment name, but no room left for JOB_ID-trial-N
    assert cli.main(["submit", *_vertex(standin), "--service-account", SA, "--tune", GRID, "--experiment", long]) == 2
    assert "leaves no room for the trials' run names" in capsys.readouterr().err
    assert not standin.find("POST", r"/pipelineJobs$") and not standin.find("POST", r"/contexts$")


def test_kubeflow_pipelines_and_compile_leave_the_experiment_empty(standin, capsys, tmp_path):
    kfp = ["--kfp-host", standin.url, "--data", "sample:40", "--registry", "http://mlflow.internal:5000"]
    assert cli.main(["submit", *kfp, "--tune", GRID, "--experiment", EXPERIMENT]) == 0, capsys.readouterr()
    [run] = standin.kfp_runs.values()
    assert _selection_inputs(run["pipeline_spec"], "trial-selection") == dict.fromkeys(EXPERIMENT_INPUTS, "")

    output = tmp_path / "spec.yaml"  # tlp compile knows no project
    assert cli.main(["compile", "--tune", GRID, "--output", str(output)]) == 0, capsys.readouterr()
    spec = yaml.safe_load(output.read_text())
    assert _selection_inputs(spec, "trial-selection") == dict.fromkeys(EXPERIMENT_INPUTS, "")
