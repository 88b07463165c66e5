"""The --tune grid, its trials and the choice of the best (plain functions, no kfp run)."""

import json
import os

import pytest

from tlp.components.lib import tuning, tuning_runs
from tlp.components.lib.specs import ConfigError


def test_a_grid_is_every_combination_with_values_in_their_options_types():
    plan = tuning.plan("fine_tune_at=60,100,120 learning_rate=1e-4,3e-5 dropout=0.2,0.4")
    assert len(plan.trials) == 12
    assert plan.trials[0] == {"fine_tune_at": 60, "learning_rate": 1e-4, "dropout": 0.2}
    assert isinstance(plan.trials[0]["fine_tune_at"], int)
    assert plan.head_settings == [{"dropout": 0.2}, {"dropout": 0.4}]  # one feature extraction each


def test_tune_trials_draws_points_with_the_seed():
    text = "fine_tune_at=60,80,100,120 learning_rate=1e-4,3e-5,1e-5"
    first, again = tuning.plan(text, trials=5, seed=7), tuning.plan(text, trials=5, seed=7)
    other = tuning.plan(text, trials=5, seed=8)
    assert first.trials == again.trials and len(first.trials) == 5
    assert first.trials != other.trials
    assert all(trial in tuning.grid_points(tuning.parse_grid(text)) for trial in first.trials)


@pytest.mark.parametrize("text, expected", [
    ("momentum=0.9", "--tune cannot tune 'momentum'"),
    ("learning_rate=20", "--learning-rate 20 must be a number of above 0 and at most 10"),
    ("dropout=1.0", "--dropout 1 must be a number of at least 0 and below 1"),
    ("fine_tune_at=-1", "--fine-tune-at -1 must be a whole number of at least 0"),
    ("dropout=", "--tune dropout= has no values"),
    ("dropout=,", "--tune dropout= has no values"),
    ("dropout", "is not NAME=VALUE"),
    ("dropout=0.1 dropout=0.2", "names dropout twice"),
])
def test_bad_grids_are_refused(text, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        tuning.plan(text)


def test_more_than_64_trials_needs_tune_trials():
    text = "fine_tune_at=" + ",".join(str(n) for n in range(10, 90, 5)) + " learning_rate=1e-4,3e-5,1e-5,3e-6,1e-6"
    with pytest.raises(ConfigError, match="80 trials, more than 64"):
        tuning.plan(text)
    assert len(tuning.plan(text, trials=10).trials) == 10


def test_head_folders_are_exact_so_close_settings_never_share_one():
    # Two dropouts that agree to six digits are two heads; ":g" gave both "head-dropout0.2".
    plan = tuning.plan("dropout=0.2,0.2000001,0.30000000000000004,0.3 fine_tune_at=50,60")
    keys = [tuning.head_key(head) for head in plan.head_settings]
    assert len(plan.head_settings) == 4 and len(set(keys)) == 4, keys
    assert keys[:2] == ["head-dropout0.2", "head-dropout0.2000001"]
    for head, key in zip(plan.head_settings, keys, strict=True):
        assert float(key.removeprefix("head-dropout")) == head["dropout"]  # the folder names the exact value
    assert tuning.head_key({"epochs": 10, "dropout": 1e-05}) == "head-dropout1e-05-epochs10"


def test_vizier_trains_ahead_only_the_heads_its_trials_can_need():
    # 8 dropouts x 8 epochs: 64 head settings. Vizier draws 3 points itself, so none is trained ahead
    # (the old plan trained all 64); each trial trains its own head.
    space = "dropout=" + ",".join(f"0.{n}" for n in range(1, 9)) + " epochs=" + ",".join(map(str, range(1, 9)))
    drawn = tuning.plan(space + " fine_tune_at=50,60", trials=3, tuner="vizier")
    assert len(drawn.head_settings) == 64 and drawn.heads_ahead == []
    # Every grid point a trial (no --tune-trials), or fewer head settings than trials: all ahead, shared.
    every = tuning.plan("dropout=0.2,0.4 fine_tune_at=50,60", tuner="vizier")
    assert every.heads_ahead == [{"dropout": 0.2}, {"dropout": 0.4}]
    few = tuning.plan("dropout=0.2,0.4 fine_tune_at=40,50,60", trials=3, tuner="vizier")
    assert few.heads_ahead == few.head_settings
    # The grid tuner knows its trials: exactly their heads.
    grid = tuning.plan(space, trials=3, seed=1)
    assert grid.heads_ahead == tuning.distinct_heads(list(grid.trials))


@pytest.mark.slow  # trains a head (50 s measured on 2 busy shared cores)
def test_a_trial_trains_its_own_head_when_none_was_trained_ahead(sample_dataset, tmp_path):
    from tests.conftest import SMALL, settings
    from tlp.components.lib.settings import step_values
    from tlp.components.lib.steps import FEATURE_EXTRACTION

    options = step_values(FEATURE_EXTRACTION, settings(alpha=SMALL["alpha"], weights="none", epochs=1,
                                                       batch_size=16).values())
    heads, trial = str(tmp_path / "heads"), str(tmp_path / "trial")
    logs = {"backup_dir": str(tmp_path / "backup"), "tensorboard_dir": str(tmp_path / "tb")}
    assert tuning_runs.train_heads(sample_dataset, heads, options, [], **logs) == {}  # none ahead
    own = tuning_runs.trial_head(heads, {"dropout": 0.35}, sample_dataset, trial, **logs)
    assert own == os.path.join(trial, "head", "head-dropout0.35")
    with open(os.path.join(own, tuning_runs.HISTORY_FILE)) as handle:
        assert len(json.load(handle)["val_accuracy"]) == 1  # trained, one epoch
    # A head the heads step trained is used as it is.
    os.makedirs(os.path.join(heads, "head-dropout0.5"))
    assert tuning_runs.trial_head(heads, {"dropout": 0.5}, sample_dataset, trial, **logs) == os.path.join(
        heads, "head-dropout0.5")


def test_best_is_by_validation_accuracy_then_lower_loss_never_test():
    results = [
        {"params": {"a": 1}, "val_accuracy": 0.9, "val_loss": 0.3, "test_accuracy": 0.99},
        {"params": {"a": 2}, "val_accuracy": 0.95, "val_loss": 0.4, "test_accuracy": 0.5},
        {"params": {"a": 3}, "val_accuracy": 0.95, "val_loss": 0.2, "test_accuracy": 0.5},
    ]
    assert tuning.best(results)["params"] == {"a": 3}


def test_selection_copies_the_best_trials_model_and_lists_every_trial(tmp_path):
    dirs = []
    for index, (accuracy, loss) in enumerate([(0.8, 0.5), (0.9, 0.4), (0.9, 0.3)]):
        path = tmp_path / f"trial{index}"
        path.mkdir()
        (path / "saved_model.pb").write_text(f"model {index}")
        record = {"params": {"fine_tune_at": 60 + index, "learning_rate": 1e-4}, "val_accuracy": accuracy,
                  "val_loss": loss, "seconds": 1.0 + index, "replicas": 1,
                  "history": {"val_accuracy": [accuracy]}, "feature_history": {"val_accuracy": [0.7]}}
        (path / tuning_runs.TRIAL_FILE).write_text(json.dumps(record))
        dirs.append(str(path))
    out = tmp_path / "out"
    out.mkdir()
    # Handed over in any order: the records, not the order, say which trial is which.
    chosen = tuning_runs.select(dirs[::-1], str(out / "model"), str(out / "h.json"), str(out / "f.json"),
                                str(out / "t.json"))
    assert chosen["best"]["params"] == {"fine_tune_at": 62, "learning_rate": 1e-4}
    assert (out / "model" / "saved_model.pb").read_text() == "model 2"
    assert [t["params"]["fine_tune_at"] for t in chosen["trials"]] == [60, 61, 62]
    assert json.loads((out / "t.json").read_text())["best"] == chosen["best"]
    history = json.loads((out / "h.json").read_text())
    assert history["val_accuracy"] == [0.9] and history["tuning"]["best"] == chosen["best"]
    assert os.path.isfile(out / "f.json")


def test_report_shows_every_trial_in_a_table_and_their_curves(tmp_path):
    from tests.unit.test_report import FEATURE, TUNED, _results
    from tlp.components.lib import report

    tuned = {"trials": [{"params": {"fine_tune_at": 60}, "val_accuracy": 0.8, "val_loss": 0.5, "seconds": 3.0,
                         "val_curve": [0.7, 0.8]},
                        {"params": {"fine_tune_at": 100}, "val_accuracy": 0.9, "val_loss": 0.4, "seconds": 4.0,
                         "val_curve": [0.85, 0.9]}],
             "best": {"params": {"fine_tune_at": 100}}}
    context = report.report_context(_results(["cat", "dog"]), True, [], 0.0, FEATURE, {**TUNED, "tuning": tuned})
    html = report.render_html(context)
    assert "Tuning: 2 trials" in html and "fine_tune_at=60" in html and "2 (best)" in html
    assert 'alt="validation curves of the trials"' in html
    plain = report.render_html(report.report_context(_results(["cat", "dog"]), True, [], 0.0, FEATURE, TUNED))
    assert "Tuning:" not in plain
