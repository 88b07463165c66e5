"""The work of a tuned run's steps, as plain functions (the components in ``components/tuning.py``
map their artifacts onto these): the heads (one feature extraction, one head per head setting),
one trial's fine-tuning, and the selection of the best trial.

A trial's directory holds its servable model and ``trial.json`` (its parameters, final validation
accuracy and loss, seconds, both phases' histories), so the selection step needs nothing but the
trials' directories and does not depend on the order in which the runner collected them.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from tlp.components.lib import tuning
from tlp.components.lib.options import coerce, iter_options
from tlp.components.lib.settings import PIPELINE_GROUPS, Settings
from tlp.components.lib.specs import ConfigError, NotFound
from tlp.components.lib.steps import FEATURE_EXTRACTION, FINE_TUNING
from tlp.components.lib.training import fine_tune, save_history, train_head

TRIAL_FILE = "trial.json"
HISTORY_FILE = "history.json"
TUNING_FILE = "tuning.json"
HEAD_OPTIONS_FILE = "head-options.json"  # the heads step's options, for a trial that trains its own head


def normalised(params: dict) -> dict:
    """A trial's values in their options' types (a loop item may have crossed kfp as floats)."""
    options = {opt.name: opt for opt in iter_options(PIPELINE_GROUPS)}
    return {name: coerce(options[name], value) for name, value in params.items()}


def train_heads(dataset_dir: str, heads_dir: str, options: dict, head_settings: list[dict], *,
                backup_dir: str, tensorboard_dir: str) -> dict:
    """Feature extraction for a tuned run: the base runs over the images once, then one head is
    trained per head setting (saved under ``heads_dir/head_key(setting)``, with its history).
    Returns {head key: history}."""
    features_dir = os.path.join(backup_dir, "features")  # shared by every head of this step
    # A trial whose head is not here (none trained ahead: TuningPlan.heads_ahead) trains it with these.
    os.makedirs(heads_dir, exist_ok=True)
    with open(os.path.join(heads_dir, HEAD_OPTIONS_FILE), "w") as handle:
        json.dump(options, handle, indent=2)
    if not head_settings:
        print("  heads: none trained ahead; each trial trains its own", flush=True)
    histories: dict = {}
    for setting in head_settings:
        setting = normalised(setting)
        key = tuning.head_key(setting)
        if key in histories:  # two settings, one folder: the second head would overwrite the first
            raise ConfigError(f"head settings {tuning.label(setting)} share the folder {key} with another")
        print(f"  head {key}: {tuning.label(setting) or 'the run settings'}", flush=True)
        histories[key] = _train_one_head(dataset_dir, os.path.join(heads_dir, key), options, setting,
                                         backup_dir=os.path.join(backup_dir, key),
                                         tensorboard_dir=os.path.join(tensorboard_dir, key), features_dir=features_dir)
    shutil.rmtree(features_dir, ignore_errors=True)
    return histories


def _train_one_head(dataset_dir: str, head_dir: str, options: dict, setting: dict, *, backup_dir: str,
                    tensorboard_dir: str, features_dir: str | None) -> dict:
    settings = Settings.for_step(FEATURE_EXTRACTION, {**options, **setting})
    history = train_head(dataset_dir, head_dir, settings, backup_dir=backup_dir, tensorboard_dir=tensorboard_dir,
                         features_dir=features_dir)
    save_history(history, os.path.join(head_dir, HISTORY_FILE))
    return history


def trial_head(heads_dir: str, head: dict, dataset_dir: str, trial_dir: str, *, backup_dir: str,
               tensorboard_dir: str) -> str:
    """The head a trial fine-tunes: the heads step's, or, when that step trained none for this
    setting (Vizier over a grid of more head settings than trials), one trained now for this
    trial alone, in ``trial_dir/head`` (with the options the heads step left)."""
    key = tuning.head_key(head)
    ahead = os.path.join(heads_dir, key)
    if os.path.isdir(ahead):
        return ahead
    options_path = os.path.join(heads_dir, HEAD_OPTIONS_FILE)
    if not os.path.isfile(options_path):
        raise NotFound(f"the heads at {heads_dir} have no {key} and no {HEAD_OPTIONS_FILE} to train it "
                                "with; run the feature-extraction-heads step of this version of tlp first.")
    own = os.path.join(trial_dir, "head", key)
    if not os.path.isfile(os.path.join(own, HISTORY_FILE)):  # a retried trial keeps the head it trained
        with open(options_path) as handle:
            options = json.load(handle)
        print(f"  head {key}: {tuning.label(head) or 'the run settings'} (trained for this trial)", flush=True)
        _train_one_head(dataset_dir, own, options, head, backup_dir=os.path.join(backup_dir, "head"),
                        tensorboard_dir=os.path.join(tensorboard_dir, "head"), features_dir=None)
    return own


def run_trial(dataset_dir: str, heads_dir: str, model_dir: str, options: dict, trial: dict, *,
              backup_dir: str, tensorboard_dir: str) -> dict:
    """Fine-tunes the head of ``trial``'s head setting with the trial's fine-tuning options.
    Writes the servable model and ``trial.json`` to ``model_dir``; returns the trial's record."""
    params = normalised(trial)
    started = time.monotonic()
    head_dir = trial_head(heads_dir, tuning.head_of(params), dataset_dir, os.path.dirname(os.path.abspath(model_dir)),
                          backup_dir=backup_dir, tensorboard_dir=tensorboard_dir)
    settings = Settings.for_step(FINE_TUNING, {**options, **tuning.trial_overrides(params)})
    print(f"  trial {tuning.label(params)}", flush=True)
    history, replicas = fine_tune(dataset_dir, head_dir, model_dir, settings, backup_dir=backup_dir,
                                  tensorboard_dir=tensorboard_dir)
    with open(os.path.join(head_dir, HISTORY_FILE)) as handle:
        head_history = json.load(handle)
    last = history if history.get("val_accuracy") else head_history  # fine_tune_epochs 0: the head's
    record = {
        "params": params,
        "val_accuracy": float(last["val_accuracy"][-1]),
        "val_loss": float(last["val_loss"][-1]),
        "seconds": round(time.monotonic() - started, 1),
        "replicas": replicas,
        "history": history,
        "feature_history": head_history,
    }
    with open(os.path.join(model_dir, TRIAL_FILE), "w") as handle:
        json.dump(record, handle, indent=2)
    return record


def read_trial(model_dir: str) -> dict:
    with open(os.path.join(model_dir, TRIAL_FILE)) as handle:
        return {**json.load(handle), "model": model_dir}


def select(trial_dirs: list[str], model_dir: str, history_path: str, feature_history_path: str,
           tuning_path: str) -> dict:
    """Copies the best trial's model to ``model_dir`` and its histories beside it; writes every
    trial's record (without the histories' bulk: the validation curves stay) to ``tuning_path``.
    Returns {"trials": [...], "best": {...}}."""
    records = [read_trial(path) for path in trial_dirs]
    records.sort(key=lambda record: [str(record["params"].get(name)) for name in sorted(record["params"])])
    chosen = tuning.best(records)
    if os.path.exists(model_dir):
        shutil.rmtree(model_dir)
    shutil.copytree(chosen["model"], model_dir)
    summary = {
        "trials": [
            {"params": r["params"], "val_accuracy": r["val_accuracy"], "val_loss": r["val_loss"],
             "seconds": r["seconds"], "val_curve": r["history"].get("val_accuracy", []), "model": r["model"]}
            for r in records
        ],
        "best": {"params": chosen["params"], "val_accuracy": chosen["val_accuracy"], "val_loss": chosen["val_loss"],
                 "replicas": chosen["replicas"]},
    }
    with open(tuning_path, "w") as handle:
        json.dump(summary, handle, indent=2)
    # The evaluation report shows every trial: the best's history carries them along.
    histories = ((history_path, {**chosen["history"], "tuning": summary}),
                 (feature_history_path, chosen["feature_history"]))
    for path, history in histories:
        with open(path, "w") as handle:
            json.dump(history, handle, indent=2)
    print(f"  best of {len(records)} trials: {tuning.label(chosen['params'])} (val accuracy "
          f"{chosen['val_accuracy']:.4f}, val loss {chosen['val_loss']:.4f})", flush=True)
    return summary
