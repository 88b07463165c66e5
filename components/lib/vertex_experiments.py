"""A tuned run's trials as Vertex AI Experiments runs: on Vertex AI the selection step (grid or
Vizier) logs one ExperimentRun per trial in the run's experiment, beside the pipeline run that
Vertex AI adds there itself. Local runs record the same trials as MLflow child runs instead
(``pipelines/tracking.py``).

A trial's run is named ``JOB_ID-trial-N``: N is the trial's place in the selection's order (by
its parameters, as in the report and the MLflow child runs), and the pipeline job's ID makes the
name unique in the experiment, since a job ID is unique in its project and region. Its
parameters are the trial's tuned values and ``pipeline_job`` (the job's resource name: the way
back to the run that trained it); its metrics are the final ``val_accuracy`` and ``val_loss``,
``seconds`` and ``best`` (1 for the trial the selection chose, else 0).
"""

from __future__ import annotations

import re

from tlp.components.lib.specs import ConfigError, ServiceError

# The SDK refuses a run whose ID, EXPERIMENT-RUN_NAME, is longer (128 less its "-tb-run" suffix).
MAX_RUN_ID_LENGTH = 121
# A generated job ID ends in its submission time, YYYYMMDDHHMMSS: the part that tells runs apart.
JOB_ID_TIME_LENGTH = 14


def run_names(experiment: str, pipeline_job_id: str, count: int) -> list[str]:
    """The trials' run names, ``JOB_ID-trial-N``. When the experiment's name leaves too little
    room, the job ID keeps its tail (the submission time) and loses the pipeline's name in front."""
    names = []
    for index in range(count):
        suffix = f"-trial-{index}"
        room = MAX_RUN_ID_LENGTH - len(experiment) - 1 - len(suffix)
        if room < min(JOB_ID_TIME_LENGTH, len(pipeline_job_id)):
            raise ConfigError(
                f"--experiment {experiment!r} leaves no room for the trials' run names in Vertex AI Experiments "
                f"(the SDK takes at most {MAX_RUN_ID_LENGTH} characters for EXPERIMENT-JOB_ID-trial-N); use a name "
                f"of at most {MAX_RUN_ID_LENGTH - 1 - len(suffix) - JOB_ID_TIME_LENGTH} characters."
            )
        names.append(pipeline_job_id[-room:].lstrip("-") + suffix)
    return names


def log_trials(tuned: dict, *, project: str, location: str, experiment: str, pipeline_job_id: str,
               api_endpoint: str = "", echo=print) -> list[str]:
    """Logs each trial of ``tuned`` (what ``tuning_runs.select`` returns: its ``trials`` and
    ``best``) as an ExperimentRun of ``experiment`` in ``project``/``location``, through the
    google-cloud-aiplatform SDK; ``api_endpoint`` is a private or regional endpoint (an
    ``http://`` URL: a loopback stand-in, over REST). Returns the runs' names; [] when
    ``experiment`` is empty (a local run, or Kubeflow Pipelines: nothing is logged here).

    Raises ConfigError, before any request, when the experiment is given without the project,
    location or job ID (a hand-edited spec) or its name leaves no room for the run names.
    Raises ServiceError when Vertex AI refuses a request (e.g. the run's service account lacks
    roles/aiplatform.user): the step fails, loudly, rather than finish without the runs the user
    asked for. No training is lost: the trials' models and trial.json stay in the pipeline root,
    and a new submission with the same settings (and unchanged data) takes the trials from
    Vertex AI's cache, so nothing is trained again. A run begun before the failure is ended
    FAILED."""
    if not experiment:
        return []
    given = {"project": project, "location": location, "pipeline_job_id": pipeline_job_id}
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ConfigError(f"the trials cannot be logged to experiment {experiment!r} without {', '.join(missing)}; "
                          "compile the pipeline with tlp submit, which sets them for Vertex AI.")
    names = run_names(experiment, pipeline_job_id, len(tuned["trials"]))

    from google.api_core.exceptions import GoogleAPICallError
    from google.cloud import aiplatform

    endpoint = {"api_endpoint": api_endpoint} if api_endpoint else {}
    # An http:// endpoint (a local emulator or stand-in) only speaks REST over plain HTTP.
    transport = {"api_transport": "rest"} if api_endpoint.startswith("http://") else {}
    job = f"projects/{project}/locations/{location}/pipelineJobs/{pipeline_job_id}"
    chosen = [trial["params"] == tuned["best"]["params"] for trial in tuned["trials"]]
    current = ""
    try:
        # experiment_tensorboard=False: without it the SDK creates a default TensorBoard instance for
        # the experiment, a resource nobody asked for (the trials log no time series).
        aiplatform.init(project=project, location=location, experiment=experiment, experiment_tensorboard=False,
                        **endpoint, **transport)
        for current, trial, best in zip(names, tuned["trials"], chosen, strict=True):
            with aiplatform.start_run(current) as run:  # ended FAILED if logging raises
                run.log_params({**trial["params"], "pipeline_job": job})
                run.log_metrics({"val_accuracy": trial["val_accuracy"], "val_loss": trial["val_loss"],
                                 "seconds": trial["seconds"], "best": int(best)})
    except (GoogleAPICallError, RuntimeError) as error:  # the SDK wraps some refused requests in RuntimeError
        raise _refused(error, experiment, f"{project}/{location}", current) from error
    echo(f"  {len(names)} trials logged to Vertex AI Experiments {experiment} ({project}/{location}), best: "
         f"{names[chosen.index(True)]}", flush=True)
    return names


def _refused(error: Exception, experiment: str, where: str, run_name: str) -> ServiceError:
    from google.api_core.exceptions import Forbidden, GoogleAPICallError, PermissionDenied

    cause = error if isinstance(error, GoogleAPICallError) else error.__cause__
    what = f"run {run_name} of experiment {experiment}" if run_name else f"experiment {experiment}"
    message = cause.message if isinstance(cause, GoogleAPICallError) else str(error)
    # Over REST the SDK puts the request in front ("PATCH https://...: why"); the why is what helps.
    detail = re.sub(r"^[A-Z]+ \S+: ", "", message.strip()).splitlines()[0][:200]
    again = "submit again with the same settings: with the data unchanged the trials come from the cache"
    if isinstance(cause, (Forbidden, PermissionDenied)):  # a 403 over REST, PERMISSION_DENIED over gRPC
        return ServiceError(f"Vertex AI Experiments refused {what} in {where} ({detail}); grant the run's service "
                            "account (--service-account, else the project's Compute Engine default one) "
                            f"roles/aiplatform.user, then {again}.")
    return ServiceError(f"Vertex AI Experiments could not record {what} in {where} ({detail}); {again}.")
