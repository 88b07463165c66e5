"""A tuned run's trials become MLflow child runs of the run."""

from tlp.components.lib.registry import MlflowRegistry
from tlp.pipelines import tracking


def test_each_trial_is_a_child_run_with_its_params_and_validation(tmp_path):
    client = MlflowRegistry(f"sqlite:///{tmp_path}/registry.db").client
    experiment = client.create_experiment("tuned")
    parent = client.create_run(experiment).info.run_id
    summary = {"tuning": {
        "trials": [{"params": {"fine_tune_at": 60, "learning_rate": 1e-4}, "val_accuracy": 0.8, "val_loss": 0.5,
                    "seconds": 3.0, "val_curve": [0.7, 0.8]},
                   {"params": {"fine_tune_at": 100, "learning_rate": 1e-4}, "val_accuracy": 0.9, "val_loss": 0.4,
                    "seconds": 4.0, "val_curve": [0.85, 0.9]}],
        "best": {"params": {"fine_tune_at": 100, "learning_rate": 1e-4}}}}
    ids = tracking._track_trials(client, experiment, parent, summary, 0)
    children = [client.get_run(run_id) for run_id in ids]
    assert [run.data.tags["mlflow.parentRunId"] for run in children] == [parent, parent]
    assert [run.data.params["fine_tune_at"] for run in children] == ["60", "100"]
    assert [run.data.metrics["val_accuracy"] for run in children] == [0.8, 0.9]
    assert [run.data.tags["tlp.best"] for run in children] == ["False", "True"]
    curve = client.get_metric_history(ids[1], "epoch_val_accuracy")
    assert [(m.step, m.value) for m in curve] == [(1, 0.85), (2, 0.9)]
    assert tracking._track_trials(client, experiment, parent, {}, 0) == []  # an untuned run has none
