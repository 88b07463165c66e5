"""The cloud runner: submits the pipeline to Vertex AI Pipelines (or a self-hosted Kubeflow
Pipelines) and manages scheduled retraining. Settings arrive resolved and checked (``resolve``,
``checks``); this module only compiles and talks to the services."""

from __future__ import annotations

import datetime
import os
import re
import tempfile
import zoneinfo
from dataclasses import dataclass

from google.api_core.exceptions import GoogleAPICallError

from tlp.components.lib.settings import (
    CloudOptions,
    DeployOptions,
    HardwareOptions,
    ImageOptions,
    LiteRTOptions,
    ScheduleOptions,
    Settings,
    TrackingOptions,
)
from tlp.components.lib.specs import ConfigError
from tlp.components.lib.steps import DATA_PREP
from tlp.components.lib.tuning import TuningPlan
from tlp.components.lib.version import image_reference
from tlp.components.lib.vertex_experiments import run_names
from tlp.pipelines import checks, environment
from tlp.pipelines.console import RunFailed
from tlp.pipelines.resolve import resolve_cloud
from tlp.pipelines.training import PIPELINE_NAME, create_pipeline

CONSOLE = "https://console.cloud.google.com/vertex-ai"


@dataclass(frozen=True)
class CloudRun:
    """A checked cloud run: what it trains with, and where and how it runs."""

    settings: Settings
    cloud: CloudOptions
    hardware: HardwareOptions
    images: ImageOptions
    deploy: DeployOptions
    labels: dict
    tracking: TrackingOptions = TrackingOptions()
    tuning: TuningPlan | None = None  # --tune: the trials
    litert: LiteRTOptions = LiteRTOptions()  # --export-litert: the optional step after registration

    @property
    def enable_caching(self) -> bool | None:
        """None keeps each task's compiled setting (data-fingerprint never cached, the rest cached);
        True or False would overwrite every task's (aiplatform's PipelineJob and kfp.Client both do).
        --no-cache: False, every step runs."""
        return False if self.cloud.no_cache else None

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or PIPELINE_NAME


# --- compiling --------------------------------------------------------------------------------


def compile_pipeline(
    images: ImageOptions, hardware: HardwareOptions, cloud: CloudOptions, path: str, *,
    deploy: DeployOptions | None = None, tracking: TrackingOptions | None = None, tuning: TuningPlan | None = None,
    litert: LiteRTOptions | None = None,
) -> str:
    """Writes the pipeline a submission with these groups would run (``tlp compile``, ``tlp submit``).
    The optional groups are keyword-only: passed by position, one group lands in another's slot."""
    from kfp import compiler

    pipeline = create_pipeline(images, hardware, cloud, deploy=deploy, tracking=tracking, tuning=tuning, litert=litert)
    compiler.Compiler().compile(pipeline, path)
    return path


def _display_name(cloud: CloudOptions) -> str:
    return cloud.display_name or f"{PIPELINE_NAME}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"


def _init_vertex(cloud: CloudOptions):
    from google.cloud import aiplatform

    endpoint = {"api_endpoint": cloud.api_endpoint} if cloud.api_endpoint else {}
    # An http:// endpoint (a local emulator or stand-in) only speaks REST over plain HTTP.
    transport = {"api_transport": "rest"} if cloud.api_endpoint.startswith("http://") else {}
    aiplatform.init(project=cloud.project, location=cloud.region, **endpoint, **transport)
    return aiplatform


def _compile(run: CloudRun, scratch: str) -> str:
    return compile_pipeline(
        run.images, run.hardware, run.cloud, os.path.join(scratch, "pipeline.yaml"), deploy=run.deploy,
        tracking=run.tracking, tuning=run.tuning, litert=run.litert,
    )


def _vertex_job(run: CloudRun, template: str, display_name: str = ""):
    aiplatform = _init_vertex(run.cloud)
    return aiplatform.PipelineJob(
        display_name=display_name or _display_name(run.cloud),
        template_path=template,
        pipeline_root=run.cloud.pipeline_root,
        parameter_values=run.settings.values(),
        labels={"tlp": "transfer-learning", **run.labels},
        enable_caching=run.enable_caching,
    )


# --- tlp submit -------------------------------------------------------------------------------


@dataclass
class Submitted:
    name: str  # resource name (Vertex) or run ID (KFP)
    link: str
    state: str = "SUBMITTED"


def submit(run: CloudRun, echo=print) -> Submitted:
    """Compiles and submits one run; with ``--wait``, follows its state until it ends."""
    cloud = run.cloud
    with tempfile.TemporaryDirectory(prefix="tlp-submit-") as scratch:
        template = _compile(run, scratch)
        if not cloud.on_vertex:
            return _submit_kfp(run, template, echo)
        job = _vertex_job(run, template)
        # The trials' Experiments runs are named after the job's ID: a name too long fails now, not after training.
        trial_runs = run_names(run.experiment, job.job_id, run.tuning.count) if run.tuning else []
        # The run appears in Vertex AI Experiments (the SDK creates the experiment if needed).
        try:
            job.submit(service_account=cloud.service_account or None, network=cloud.network or None,
                       experiment=run.experiment)
        except RuntimeError as error:
            if isinstance(error.__cause__, GoogleAPICallError):  # the SDK wraps a refused Metadata request
                raise error.__cause__ from None
            raise
    job_id = job.resource_name.rsplit("/", 1)[-1]
    submitted = Submitted(job.resource_name, f"{CONSOLE}/pipelines/locations/{cloud.region}/runs/{job_id}"
                                             f"?project={cloud.project}")
    echo(f"submitted {submitted.name}\n  console: {submitted.link}\n  experiment: {run.experiment} "
         f"({CONSOLE}/experiments/locations/{cloud.region}/experiments/{run.experiment}?project={cloud.project})")
    if trial_runs:
        echo(f"  trials: runs {trial_runs[0]} .. {trial_runs[-1]} of that experiment, once the selection step ran")
    if cloud.wait:
        submitted.state = follow_vertex(job, echo, run)
    return submitted


def follow_vertex(job, echo=print, run: CloudRun | None = None) -> str:
    """Follows a Vertex AI pipeline job until it ends (the SDK logs its state as it polls);
    raises RunFailed unless it succeeded. Says which steps the cache answered."""
    try:
        job.wait()
    except RuntimeError as error:  # the SDK's way of saying the job failed or was cancelled
        # The job's own error is often generic ("some tasks failed"); the failed task's says why.
        details = [job.gca_resource.error.message or str(error)]
        details += [task.error.message for task in job.task_details if task.error.message]
        capacity = next((found for found in (explain_capacity(d, run) for d in details if run) if found), None)
        raise RunFailed(capacity or (
            f"run {job.resource_name} ended {job.state.name}: {error}; see the console link above for the failed "
            "step's logs."
        )) from None
    state = job.state.name
    echo(f"  {datetime.datetime.now():%H:%M:%S} {state}")
    cached = cached_steps(job)
    if cached:
        echo(f"  {cache_note(cached)}")
    return state


def cached_steps(job) -> list[str]:
    """The steps of a finished Vertex AI run whose results came from the cache."""
    return [
        task.task_name for task in job.task_details
        if task.execution and task.execution.state.name == "CACHED"
    ]


def cache_note(cached: list[str]) -> str:
    if DATA_PREP in cached:
        return (f"data unchanged since an earlier run (same source fingerprint): {', '.join(cached)} came from the "
                "cache, nothing was trained again")
    return f"from the cache: {', '.join(cached)}"


# What Vertex AI says when it cannot give a job its machines (quota, or none free in the zone).
_QUOTA = re.compile(r"quota|exceed.*limit", re.IGNORECASE)
_STOCKOUT = re.compile(r"resources? (?:are|is) (?:insufficient|not available|unavailable|exhausted)|"
                       r"(?:does not have|not) enough resources|RESOURCE_POOL_EXHAUSTED|stock-?out", re.IGNORECASE)


def explain_capacity(message: str, run: CloudRun) -> str | None:
    """One sentence for a refused GPU quota or a stock-out: region, accelerator, what to try. None
    when the message is about something else."""
    hardware, region = run.hardware, run.cloud.region
    if hardware.accelerator:
        who = f"fine-tuning could not get {hardware.gpus} {hardware.accelerator} GPU(s) in {region}"
        spot = "; --spot draws on a separate (preemptible) quota" if not hardware.spot else ""
        other = "another --region or --accelerator (e.g. NVIDIA_TESLA_T4)"
    else:
        who, spot, other = f"a step could not get its machine in {region}", "", "another --region or --machine-type"
    if _QUOTA.search(message):
        return (f"{who}: the project's quota is too small ({_first_line(message)}); request more in the console "
                f"(IAM & Admin > Quotas, filter on {region}), or try {other}, or fewer --gpus{spot}.")
    if _STOCKOUT.search(message):
        return (f"{who}: none were free there ({_first_line(message)}); try again later (a schedule's next run may "
                f"find some), or {other}{spot}.")
    return None


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0][:200] if message.strip() else "no details"


def _kfp_client(cloud: CloudOptions):
    import kfp

    return kfp.Client(host=cloud.kfp_host)


def _submit_kfp(run: CloudRun, template: str, echo) -> Submitted:
    cloud = run.cloud
    client = _kfp_client(cloud)
    result = client.create_run_from_pipeline_package(
        template, arguments=run.settings.values(), run_name=_display_name(cloud),
        experiment_name=run.experiment, enable_caching=run.enable_caching,
        service_account=cloud.service_account or None,
    )
    submitted = Submitted(result.run_id, f"{cloud.kfp_host.rstrip('/')}/#/runs/details/{result.run_id}")
    echo(f"submitted run {submitted.name}\n  console: {submitted.link}")
    if cloud.wait:
        detail = client.wait_for_run_completion(result.run_id, timeout=7 * 24 * 3600)
        submitted.state = str(detail.state)
        echo(f"  {submitted.state}")
        if submitted.state != "SUCCEEDED":
            raise RunFailed(f"run {result.run_id} ended {submitted.state}; see {submitted.link}.")
    return submitted


# --- tlp schedule -----------------------------------------------------------------------------


def check_cron(cron: str) -> tuple[str | None, str]:
    """``[TZ=Area/City ]m h dom mon dow`` -> (time zone or None, the five fields)."""
    from croniter import croniter

    zone, fields = None, cron.strip()
    match = re.fullmatch(r"(?:CRON_)?TZ=(\S+)\s+(.*)", fields)
    if match:
        zone, fields = match.group(1), match.group(2)
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"--cron {cron!r}: {zone!r} is not a time zone; use e.g. TZ=Europe/Berlin.") from None
    if len(fields.split()) != 5 or not croniter.is_valid(fields):
        raise ConfigError(
            f"--cron {cron!r} is not a cron schedule of five fields (minute hour day-of-month month day-of-week), "
            "optionally after TZ=Area/City; e.g. --cron 'TZ=Europe/Berlin 0 3 * * 1' (Mondays at 03:00)."
        )
    return zone, fields


def _timestamp(value: str, flag: str) -> datetime.datetime | None:
    if not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{flag} {value!r} is not an ISO 8601 time; e.g. {flag} 2027-01-01T00:00:00Z.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def check_schedule(request: ScheduleOptions) -> tuple[datetime.datetime | None, datetime.datetime | None]:
    check_cron(request.cron)
    if not request.name:
        raise ConfigError("--name is required: schedules are listed, paused and deleted by name.")
    start, end = _timestamp(request.start, "--start"), _timestamp(request.end, "--end")
    if start and end and end <= start:
        raise ConfigError(f"--end {request.end} is not after --start {request.start}.")
    return start, end


def next_runs(cron: str, count: int = 3) -> list[str]:
    """The next ``count`` times the schedule fires (for the user to check it means what they think)."""
    from croniter import croniter

    zone, fields = check_cron(cron)
    now = datetime.datetime.now(zoneinfo.ZoneInfo(zone) if zone else datetime.timezone.utc)
    times = croniter(fields, now)
    return [times.get_next(datetime.datetime).isoformat(timespec="minutes") for _ in range(count)]


def create_schedule(run: CloudRun, request: ScheduleOptions, echo=print) -> str:
    cloud = run.cloud
    start, end = check_schedule(request)
    with tempfile.TemporaryDirectory(prefix="tlp-schedule-") as scratch:
        template = _compile(run, scratch)
        if not cloud.on_vertex:
            return _create_kfp_recurring_run(run, request, template, start, end, echo)
        job = _vertex_job(run, template, display_name=request.name)
        schedule = job.create_schedule(
            cron=request.cron, display_name=request.name, max_concurrent_run_count=request.max_concurrent,
            max_run_count=request.max_runs or None, start_time=start and start.isoformat(),
            end_time=end and end.isoformat(),
            service_account=cloud.service_account or None, network=cloud.network or None,
        )
    echo(f"created schedule {schedule.resource_name} ({request.name}): {request.cron}; next runs "
         f"{', '.join(next_runs(request.cron))}\n  console: {CONSOLE}/pipelines/schedules?project={cloud.project}")
    return schedule.resource_name


def _create_kfp_recurring_run(run: CloudRun, request: ScheduleOptions, template, start, end, echo) -> str:
    cloud = run.cloud
    zone, fields = check_cron(request.cron)
    if zone:
        raise ConfigError("Kubeflow Pipelines cron schedules run in the cluster's time zone; drop TZ= from --cron.")
    client = _kfp_client(cloud)
    experiment = client.create_experiment(PIPELINE_NAME)
    recurring = client.create_recurring_run(
        experiment_id=experiment.experiment_id, job_name=request.name,
        cron_expression=f"0 {fields}",  # KFP's cron has a leading seconds field
        pipeline_package_path=template, params=run.settings.values(),
        max_concurrency=request.max_concurrent, start_time=start and start.isoformat(),
        end_time=end and end.isoformat(), enable_caching=run.enable_caching, enabled=True,
        service_account=cloud.service_account or None,
    )
    echo(f"created recurring run {recurring.recurring_run_id} ({request.name}): {request.cron}; next runs "
         f"{', '.join(next_runs(request.cron))}")
    return recurring.recurring_run_id


@dataclass
class ScheduleInfo:
    name: str
    display_name: str
    cron: str
    state: str
    next_run: str = ""


def list_schedules(cloud: CloudOptions) -> list[ScheduleInfo]:
    if not cloud.on_vertex:
        response = _kfp_client(cloud).list_recurring_runs(page_size=100)
        return [
            ScheduleInfo(r.recurring_run_id, r.display_name, r.trigger.cron_schedule.cron if r.trigger else "",
                         str(r.status))
            for r in response.recurring_runs or []
        ]
    aiplatform = _init_vertex(cloud)
    return [
        ScheduleInfo(s.resource_name, s.display_name, s.cron, s.state.name,
                     str(s.gca_resource.next_run_time or ""))
        for s in aiplatform.PipelineJobSchedule.list()
    ]


def _find_schedule(cloud: CloudOptions, name: str):
    """A schedule by resource name, numeric ID or display name (which must be unique)."""
    aiplatform = _init_vertex(cloud)
    if name.startswith("projects/"):
        return aiplatform.PipelineJobSchedule.get(name)
    matches = [
        schedule for schedule in aiplatform.PipelineJobSchedule.list()
        if name in (schedule.display_name, schedule.resource_name.rsplit("/", 1)[-1])
    ]
    if len(matches) != 1:
        found = "no schedule" if not matches else f"{len(matches)} schedules"
        raise ConfigError(f"{found} called {name!r} in {cloud.project}/{cloud.region}; see `tlp schedule list` and "
                          "pass the resource name.")
    return matches[0]


def change_schedule(cloud: CloudOptions, name: str, action: str) -> str:
    """``pause``, ``resume`` or ``delete`` one schedule. Returns its resource name or ID."""
    if not cloud.on_vertex:
        client = _kfp_client(cloud)
        call = {"pause": client.disable_recurring_run, "resume": client.enable_recurring_run,
                "delete": client.delete_recurring_run}[action]
        call(name)
        return name
    schedule = _find_schedule(cloud, name)
    getattr(schedule, action)()
    return schedule.resource_name


# --- planning a cloud run (no request is made) ------------------------------------------------


def plan_run(
    settings: Settings, cloud: CloudOptions, hardware: HardwareOptions, images: ImageOptions,
    deploy: DeployOptions | None = None, tracking: TrackingOptions | None = None,
):
    """Resolves ``auto`` and the registry for the cloud and checks everything a cloud run needs,
    credentials included. Returns the run and the notes on what was resolved. Makes no request."""
    cloud = checks.check_cloud_target(cloud)
    hardware = checks.check_hardware(hardware, settings.runtime.devices, on_vertex=cloud.on_vertex)
    labels = checks.parse_labels(cloud.labels)
    tracking = checks.check_tracking(tracking or TrackingOptions(), cloud)
    # Without this a plan_run(...) that leaves deploy out ended in an AttributeError on None.
    deploy = deploy or DeployOptions()
    settings, notes = resolve_cloud(settings, cloud.project, cloud.region, cloud.api_endpoint, cloud.on_vertex,
                                   images)
    settings = checks.check_cloud_settings(settings)
    if deploy.deploy_endpoint and not settings.registry.registry.startswith("vertex://"):
        raise ConfigError(
            f"--deploy-endpoint {deploy.deploy_endpoint} deploys to a Vertex AI endpoint, so the run must register "
            f"into Vertex AI (--registry vertex), not {settings.registry.registry}."
        )
    if cloud.on_vertex:
        environment.check_credentials()
    settings = dataflow_defaults(settings, cloud, images)
    return CloudRun(settings, cloud, hardware, images, deploy, labels, tracking), notes


def dataflow_defaults(settings: Settings, cloud: CloudOptions, images: ImageOptions) -> Settings:
    """With ``--data-prep-runner dataflow``, the Dataflow settings not given take the cloud
    options' values (project, region, service account, network), the temp folder lies under the
    pipeline root and the workers' image beside the other images."""
    data = settings.data
    if data.data_prep_runner != "dataflow":
        return settings
    given = {
        "dataflow_project": data.dataflow_project or cloud.project,
        "dataflow_region": data.dataflow_region or cloud.region,
        "dataflow_service_account": data.dataflow_service_account or cloud.service_account,
        "dataflow_network": data.dataflow_network or cloud.network,
        "dataflow_temp_location": data.dataflow_temp_location
        or (f"{cloud.pipeline_root.rstrip('/')}/dataflow" if cloud.pipeline_root else ""),
        "dataflow_image": data.dataflow_image or image_reference(images.image_repo, images.image_tag or None,
                                                                 kind="dataflow"),
    }
    return settings.replace(**given)
