"""The components of a tuned run (``--tune``): the heads, one trial's fine-tuning, the selection.
Thin wrappers over ``tlp.components.lib.tuning_runs`` (and ``vertex_experiments``, where the
selection logs the trials as Vertex AI Experiments runs)."""

from typing import List, NamedTuple  # noqa: UP035 - kfp reads typing.List for a collected input

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from tlp.components.container_images import image_reference


@dsl.component(base_image=image_reference(kind="train"), install_kfp_package=False)
def feature_extraction_heads(
    dataset: Input[Dataset],
    heads: Output[Model],
    options: dict,
    head_settings: list,
) -> NamedTuple("HeadsOutputs", [("heads", int)]):  # type: ignore[valid-type]  # kfp's NamedTuple outputs idiom
    """Feature extraction once for every trial: the frozen base runs over the images once and one
    head is trained per distinct head setting.

    Args:
        dataset: The data-prep output.
        heads: Output: one feature-extraction model per head setting, in ``head-...`` folders.
        options: The options feature extraction reads (as for a single run).
        head_settings: The distinct head settings of the trials (dicts of dropout / epochs).

    Returns:
        The number of heads trained.
    """
    import os
    from collections import namedtuple

    from tlp.components.lib.training import tensorboard_dir
    from tlp.components.lib.tuning_runs import train_heads

    task_dir = os.path.dirname(heads.path)
    trained = train_heads(
        dataset.path, heads.path, options, head_settings, backup_dir=os.path.join(task_dir, "backup"),
        tensorboard_dir=tensorboard_dir(os.path.join(task_dir, "tensorboard")),
    )
    heads.metadata.update({"framework": "tf-keras", "heads": sorted(trained)})
    HeadsOutputs = namedtuple("HeadsOutputs", ["heads"])
    return HeadsOutputs(len(trained))


@dsl.component(base_image=image_reference(kind="train"), install_kfp_package=False)
def fine_tuning_trial(
    dataset: Input[Dataset],
    heads: Input[Model],
    model: Output[Model],
    options: dict,
    trial: dict,
) -> NamedTuple("TrialOutputs", [("val_accuracy", float), ("val_loss", float), ("seconds", float)]):  # type: ignore[valid-type]  # kfp's NamedTuple outputs idiom
    """One trial: fine-tunes its head setting's head with the trial's fine-tuning options.

    Args:
        dataset: The data-prep output.
        heads: The feature-extraction-heads output.
        model: Output: the trial's servable model, with ``trial.json`` (parameters, validation
            accuracy and loss, seconds, histories).
        options: The options fine-tuning reads (as for a single run).
        trial: The trial's values of the tuned options.

    Returns:
        The final validation accuracy and loss, and the trial's seconds.
    """
    import os
    from collections import namedtuple

    from tlp.components.lib.training import tensorboard_dir
    from tlp.components.lib.tuning_runs import run_trial

    task_dir = os.path.dirname(model.path)
    record = run_trial(
        dataset.path, heads.path, model.path, options, trial, backup_dir=os.path.join(task_dir, "backup"),
        tensorboard_dir=tensorboard_dir(os.path.join(task_dir, "tensorboard")),
    )
    model.metadata.update({"framework": "tensorflow", "format": "saved_model", "trial": record["params"],
                           "val_accuracy": record["val_accuracy"], "val_loss": record["val_loss"]})
    TrialOutputs = namedtuple("TrialOutputs", ["val_accuracy", "val_loss", "seconds"])
    return TrialOutputs(
        record["val_accuracy"], record["val_loss"], record["seconds"]
    )


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def trial_selection(
    trials: Input[List[Model]],  # noqa: UP006
    model: Output[Model],
    history: Output[Artifact],
    feature_history: Output[Artifact],
    tuning: Output[Artifact],
    project: str = "",
    location: str = "",
    experiment: str = "",
    api_endpoint: str = "",
    pipeline_job_id: str = "",
) -> NamedTuple("SelectionOutputs", [("best", str), ("replicas", int)]):  # type: ignore[valid-type]  # kfp's NamedTuple outputs idiom
    """Chooses the best trial by validation accuracy (ties: lower validation loss); never by test.
    On Vertex AI, logs each trial as a run of the run's Vertex AI Experiments experiment.

    Args:
        trials: Every trial's model (with its trial.json).
        model: Output: a copy of the best trial's model, for evaluation and registration.
        history: Output: the best trial's fine-tuning history (JSON).
        feature_history: Output: its head's feature-extraction history (JSON).
        tuning: Output: every trial's parameters, validation accuracy and loss, seconds and
            validation curve, and the best (JSON).
        project: The Google Cloud project of the experiment.
        location: Its region.
        experiment: The experiment each trial is logged to as a run ("": nothing is logged; set
            only for Vertex AI).
        api_endpoint: A private or regional Vertex AI API endpoint ("": the default).
        pipeline_job_id: The pipeline job's ID, in the runs' names and parameters.

    Returns:
        The best trial's parameters (JSON) and its replicas in sync.
    """
    import json
    from collections import namedtuple

    from tlp.components.lib.tuning_runs import select
    from tlp.components.lib.vertex_experiments import log_trials

    chosen = select([trial.path for trial in trials], model.path, history.path, feature_history.path, tuning.path)
    log_trials(chosen, project=project, location=location, experiment=experiment, pipeline_job_id=pipeline_job_id,
               api_endpoint=api_endpoint)
    best = chosen["best"]
    model.metadata.update({"framework": "tensorflow", "format": "saved_model", "trial": best["params"]})
    tuning.metadata.update({"trials": len(chosen["trials"]), "best": best["params"]})
    SelectionOutputs = namedtuple("SelectionOutputs", ["best", "replicas"])
    return SelectionOutputs(json.dumps(best["params"]), int(best["replicas"]))


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def vizier_worker_pools(
    dataset: Input[Dataset],
    heads: Input[Model],
    options: dict,
    image: str,
    machine_type: str,
    accelerator_type: str,
    accelerator_count: int,
) -> list:
    """The hyperparameter tuning job's worker pool: our training image running one trial on the
    data and heads of this run (their URIs are known only once those steps ran).

    Args:
        dataset: The data-prep output.
        heads: The feature-extraction-heads output.
        options: The options fine-tuning reads.
        image: The training image.
        machine_type: The trial machine type.
        accelerator_type: The GPU type ("" for none).
        accelerator_count: GPUs per trial machine.

    Returns:
        The worker_pool_specs of HyperparameterTuningJobRunOp.
    """
    import json

    machine: dict = {"machine_type": machine_type}
    if accelerator_type:
        machine.update(accelerator_type=accelerator_type, accelerator_count=accelerator_count)
    return [{
        "machine_spec": machine, "replica_count": 1,
        "container_spec": {
            "image_uri": image, "command": ["python", "-m", "tlp.components.vizier_trial"],
            "args": ["--dataset", dataset.uri, "--heads", heads.uri, "--options", json.dumps(options)],
        },
    }]


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def vizier_selection(
    trials_root: str,
    model: Output[Model],
    history: Output[Artifact],
    feature_history: Output[Artifact],
    tuning: Output[Artifact],
    project: str = "",
    location: str = "",
    experiment: str = "",
    api_endpoint: str = "",
    pipeline_job_id: str = "",
    expected_trials: int = 0,
) -> NamedTuple("VizierSelectionOutputs", [("best", str), ("replicas", int)]):  # type: ignore[valid-type]  # kfp's NamedTuple outputs idiom
    """The best of the hyperparameter tuning job's trials (each wrote TRIAL_ID/model/trial.json),
    chosen and logged to Vertex AI Experiments as ``trial_selection`` does. Trials that failed
    (the job allows ``--retries`` of them) left no model: the step says how many.

    Args:
        trials_root: The job's base output directory (gs://...).
        model: Output: a copy of the best trial's model.
        history: Output: its fine-tuning history (JSON).
        feature_history: Output: its head's feature-extraction history (JSON).
        tuning: Output: every trial and the best (JSON).
        project: The Google Cloud project of the experiment.
        location: Its region.
        experiment: The experiment each trial is logged to as a run ("": nothing is logged).
        api_endpoint: A private or regional Vertex AI API endpoint ("": the default).
        pipeline_job_id: The pipeline job's ID, in the runs' names and parameters.
        expected_trials: The trials the job ran (its max_trial_count); fewer models means some failed.

    Returns:
        The best trial's parameters (JSON) and its replicas in sync.
    """
    import glob
    import json
    import os
    from collections import namedtuple

    from tlp.components.lib.tuning_runs import TRIAL_FILE, select
    from tlp.components.lib.vertex_experiments import log_trials
    from tlp.components.vizier_trial import fuse_path

    found = sorted(os.path.dirname(path) for path in glob.glob(os.path.join(fuse_path(trials_root), "*", "model",
                                                                            TRIAL_FILE)))
    failed = max(expected_trials - len(found), 0)
    if failed:
        print(f"  {failed} of {expected_trials} trials failed and left no model (see the tuning job's trials in the "
              f"console); choosing among the {len(found)} that finished", flush=True)
    chosen = select(found, model.path, history.path, feature_history.path, tuning.path)
    log_trials(chosen, project=project, location=location, experiment=experiment, pipeline_job_id=pipeline_job_id,
               api_endpoint=api_endpoint)
    model.metadata.update({"framework": "tensorflow", "format": "saved_model", "trial": chosen["best"]["params"]})
    tuning.metadata.update({"trials": len(found), "failed_trials": failed, "best": chosen["best"]["params"]})
    VizierSelectionOutputs = namedtuple("VizierSelectionOutputs", ["best", "replicas"])
    return VizierSelectionOutputs(
        json.dumps(chosen["best"]["params"]), int(chosen["best"]["replicas"])
    )
