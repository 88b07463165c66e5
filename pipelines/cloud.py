"""The cloud runner: submits the pipeline to Vertex AI Pipelines (or a self-hosted Kubeflow
Pipelines) and manages scheduled retraining. Like ``runners.py``, it is the only place that
reads the environment (credentials, default project) and talks to the services; everything is
checked before the first request."""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import tempfile
import zoneinfo
from dataclasses import dataclass, field

from tlp.components.lib import specs
from tlp.components.lib.specs import ConfigError
from tlp.pipelines import runners
from tlp.pipelines.training import PIPELINE_NAME, FineTuneHardware, create_pipeline

CONSOLE = "https://console.cloud.google.com/vertex-ai"
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


@dataclass
class CloudConfig:
    """Where and how a run is submitted (``tlp submit`` / ``tlp schedule create``)."""

    project: str = ""
    region: str = ""
    pipeline_root: str = ""
    service_account: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    enable_caching: bool = True
    network: str = ""
    api_endpoint: str = ""
    kfp_host: str = ""
    display_name: str = ""
    image_repo: str = "tlp"
    image_tag: str | None = None
    gpus: int = 0
    accelerator: str = ""
    machine_type: str = ""
    replicas: int = 1

    @property
    def on_vertex(self) -> bool:
        return not self.kfp_host

    def hardware(self) -> FineTuneHardware:
        return FineTuneHardware(
            gpus=self.gpus, accelerator=self.accelerator, machine_type=self.machine_type,
            replicas=self.replicas, service_account=self.service_account, network=self.network,
        )


# --- checks before any request --------------------------------------------------------------


def parse_labels(items: list[str]) -> dict[str, str]:
    """``--labels team=vision,env=prod`` (repeatable) -> a dict, checked against Google's rules."""
    labels = {}
    for item in (part for value in items for part in value.split(",") if part):
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise ConfigError(
                f"--labels {item!r} is not KEY=VALUE with lowercase letters, digits, '_' or '-' (key starting "
                "with a letter, both at most 63 characters); e.g. --labels team=vision,env=prod."
            )
        labels[key] = value
    return labels


def accelerator_types() -> list[str]:
    """The accelerator names Vertex AI knows, from the API's own enum."""
    from google.cloud.aiplatform_v1.types import AcceleratorType

    return [t.name for t in AcceleratorType if t.name != "ACCELERATOR_TYPE_UNSPECIFIED"]


def check_hardware(cloud: CloudConfig, devices: str) -> CloudConfig:
    """GPUs, accelerator, machine type and replicas of the fine-tuning step. Returns the config
    with ``gpus`` defaulted to 1 when only an accelerator type was given."""
    if cloud.gpus < 0 or cloud.replicas < 1:
        raise ConfigError(f"--gpus {cloud.gpus} / --replicas {cloud.replicas}: use --gpus 0 or more and --replicas 1 "
                          "or more.")
    if cloud.accelerator:
        known = accelerator_types()
        if cloud.accelerator not in known:
            model = cloud.accelerator.upper().replace("-", "_").rsplit("_", 1)[-1]  # NVIDIA_T4 -> T4
            close = [name for name in known if model in name.split("_")]
            raise ConfigError(
                f"--accelerator {cloud.accelerator!r} is not a Vertex AI accelerator type; use one of "
                f"{', '.join(close or known)}."
            )
        if not cloud.gpus:
            cloud = dataclasses.replace(cloud, gpus=1)
    elif cloud.gpus:
        raise ConfigError(
            f"--gpus {cloud.gpus} needs --accelerator TYPE to say which GPUs, e.g. --accelerator NVIDIA_L4."
        )
    wants_gpus = specs.parse_devices(devices)[0] == "gpu"
    if cloud.replicas > 1 and wants_gpus and not cloud.gpus:
        raise ConfigError(
            f"--replicas {cloud.replicas} with --devices {devices} asks for GPUs but gives the machines none; add "
            "--gpus N --accelerator TYPE, or use --devices auto to train on their CPUs."
        )
    if cloud.replicas > 1 and not cloud.on_vertex:
        raise ConfigError(
            f"--replicas {cloud.replicas} runs fine-tuning as a Vertex AI custom job, which a Kubeflow Pipelines "
            "host cannot start; drop --kfp-host or use --replicas 1."
        )
    if cloud.machine_type and not cloud.on_vertex:
        raise ConfigError("--machine-type is a Vertex AI setting; with --kfp-host use --gpus/--accelerator only.")
    return cloud


def check_credentials() -> None:
    """Fails early, with how to log in, when no Application Default Credentials exist."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        google.auth.default()
    except DefaultCredentialsError as error:
        raise ConfigError(
            "no Google Cloud credentials found; log in with `gcloud auth application-default login` or set "
            f"GOOGLE_APPLICATION_CREDENTIALS to a service-account key file ({str(error).splitlines()[0]})."
        ) from None


def resolve_cloud(run: runners.RunConfig, cloud: CloudConfig) -> tuple[runners.RunConfig, CloudConfig]:
    """Fills cloud defaults and checks everything a cloud run needs. Makes no request."""
    if cloud.on_vertex:
        project = cloud.project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")
        region = cloud.region or os.environ.get("GOOGLE_CLOUD_REGION") or os.environ.get("CLOUDSDK_COMPUTE_REGION")
        if not project:
            raise ConfigError("no Google Cloud project: pass --project PROJECT_ID (or set GOOGLE_CLOUD_PROJECT).")
        if not region:
            raise ConfigError("no region: pass --region, e.g. --region us-central1 (or set GOOGLE_CLOUD_REGION).")
        if not cloud.pipeline_root.startswith("gs://") or len(cloud.pipeline_root) <= len("gs://"):
            raise ConfigError(
                f"--pipeline-root {cloud.pipeline_root!r} must be a Cloud Storage URI such as gs://BUCKET/tlp: "
                "Vertex AI keeps the run's data and models there."
            )
        cloud = dataclasses.replace(cloud, project=project, region=region)
    elif not re.match(r"https?://", cloud.kfp_host):
        raise ConfigError(f"--kfp-host {cloud.kfp_host!r} must be the URL of the Kubeflow Pipelines API, e.g. "
                          "http://localhost:8080.")
    cloud = check_hardware(cloud, run.devices)
    if cloud.api_endpoint and not cloud.on_vertex:
        raise ConfigError("--api-endpoint is a Vertex AI setting; with --kfp-host the host is the endpoint.")

    notes = list(run.notes)
    data, weights, registry = run.data, run.weights, run.registry
    if data == "auto":  # the cloud has the network: the tutorial's data set
        data = specs.DEFAULT_DATA
        notes.append(f"--data auto -> {data}")
    if weights == "auto":
        weights = "imagenet"
        notes.append("--weights auto -> imagenet")
    spec = specs.parse_data_spec(data)
    if spec.kind == "folder" and not spec.path.startswith("gs://"):
        raise ConfigError(
            f"--data folder:{spec.path} is on this machine, which a cloud run cannot see; upload it "
            f"(gcloud storage cp -r {spec.path} gs://BUCKET/photos) and pass --data folder:gs://BUCKET/photos."
        )
    if weights not in ("imagenet", "none"):
        raise ConfigError(
            f"--weights {weights} is a file on this machine; a cloud run uses imagenet (baked into the training "
            "image) or none."
        )
    if not registry or registry == "vertex":
        if not cloud.on_vertex:
            raise ConfigError("a --kfp-host run needs --registry: an MLflow server URL or vertex://PROJECT/REGION.")
        registry = f"vertex://{cloud.project}/{cloud.region}"
        if cloud.api_endpoint:
            registry += f"?api_endpoint={cloud.api_endpoint}"
    if registry.startswith("sqlite:"):
        raise ConfigError(
            f"--registry {registry} is a file on this machine, which a cloud run cannot reach; use vertex "
            "(the Vertex AI Model Registry) or an MLflow server URL."
        )
    if cloud.on_vertex:
        check_credentials()
    run = dataclasses.replace(run, data=data, weights=weights, registry=registry, notes=notes)
    return runners.validate(run, local=False), cloud


# --- compiling --------------------------------------------------------------------------------


def compile_pipeline(cloud: CloudConfig, path: str) -> str:
    from kfp import compiler

    pipeline = create_pipeline(cloud.image_repo, cloud.image_tag, cloud.hardware())
    compiler.Compiler().compile(pipeline, path)
    return path


def _display_name(cloud: CloudConfig) -> str:
    return cloud.display_name or f"{PIPELINE_NAME}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"


def _init_vertex(cloud: CloudConfig):
    from google.cloud import aiplatform

    endpoint = {"api_endpoint": cloud.api_endpoint} if cloud.api_endpoint else {}
    # An http:// endpoint (a local emulator or stand-in) only speaks REST over plain HTTP.
    transport = {"api_transport": "rest"} if cloud.api_endpoint.startswith("http://") else {}
    aiplatform.init(project=cloud.project, location=cloud.region, **endpoint, **transport)
    return aiplatform


def _vertex_job(run: runners.RunConfig, cloud: CloudConfig, template: str):
    aiplatform = _init_vertex(cloud)
    return aiplatform.PipelineJob(
        display_name=_display_name(cloud),
        template_path=template,
        pipeline_root=cloud.pipeline_root,
        parameter_values=run.pipeline_arguments(),
        labels={"tlp": "transfer-learning", **cloud.labels},
        enable_caching=cloud.enable_caching,
    )


# --- tlp submit -------------------------------------------------------------------------------


@dataclass
class Submitted:
    name: str  # resource name (Vertex) or run ID (KFP)
    link: str
    state: str = "SUBMITTED"


def submit(run: runners.RunConfig, cloud: CloudConfig, wait: bool = False, echo=print) -> Submitted:
    """Compiles and submits one run; with ``wait``, follows its state until it ends."""
    with tempfile.TemporaryDirectory(prefix="tlp-submit-") as scratch:
        template = compile_pipeline(cloud, os.path.join(scratch, "pipeline.yaml"))
        if not cloud.on_vertex:
            return _submit_kfp(run, cloud, template, wait, echo)
        job = _vertex_job(run, cloud, template)
        job.submit(service_account=cloud.service_account or None, network=cloud.network or None)
    job_id = job.resource_name.rsplit("/", 1)[-1]
    submitted = Submitted(job.resource_name, f"{CONSOLE}/pipelines/locations/{cloud.region}/runs/{job_id}"
                                             f"?project={cloud.project}")
    echo(f"submitted {submitted.name}\n  console: {submitted.link}")
    if wait:
        submitted.state = follow_vertex(job, echo)
    return submitted


def follow_vertex(job, echo=print) -> str:
    """Follows a Vertex AI pipeline job until it ends (the SDK logs its state as it polls);
    raises RunFailed unless it succeeded."""
    try:
        job.wait()
    except RuntimeError as error:  # the SDK's way of saying the job failed or was cancelled
        raise runners.RunFailed(
            f"run {job.resource_name} ended {job.state.name}: {error}; see the console link above for the failed "
            "step's logs."
        ) from None
    state = job.state.name
    echo(f"  {datetime.datetime.now():%H:%M:%S} {state}")
    return state


def _kfp_client(cloud: CloudConfig):
    import kfp

    return kfp.Client(host=cloud.kfp_host)


def _submit_kfp(run, cloud, template, wait, echo) -> Submitted:
    client = _kfp_client(cloud)
    result = client.create_run_from_pipeline_package(
        template, arguments=run.pipeline_arguments(), run_name=_display_name(cloud),
        experiment_name=PIPELINE_NAME, enable_caching=cloud.enable_caching,
        service_account=cloud.service_account or None,
    )
    submitted = Submitted(result.run_id, f"{cloud.kfp_host.rstrip('/')}/#/runs/details/{result.run_id}")
    echo(f"submitted run {submitted.name}\n  console: {submitted.link}")
    if wait:
        detail = client.wait_for_run_completion(result.run_id, timeout=7 * 24 * 3600)
        submitted.state = str(detail.state)
        echo(f"  {submitted.state}")
        if submitted.state != "SUCCEEDED":
            raise runners.RunFailed(f"run {result.run_id} ended {submitted.state}; see {submitted.link}.")
    return submitted


# --- tlp schedule -----------------------------------------------------------------------------


@dataclass
class ScheduleRequest:
    cron: str
    name: str
    max_concurrent: int = 1
    max_runs: int | None = None
    start: str = ""
    end: str = ""


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


def check_schedule(request: ScheduleRequest) -> tuple[datetime.datetime | None, datetime.datetime | None]:
    check_cron(request.cron)
    if not request.name:
        raise ConfigError("--name is required: schedules are listed, paused and deleted by name.")
    if request.max_concurrent < 1 or (request.max_runs is not None and request.max_runs < 1):
        raise ConfigError("--max-concurrent and --max-runs must be 1 or more.")
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


def create_schedule(run: runners.RunConfig, cloud: CloudConfig, request: ScheduleRequest, echo=print) -> str:
    start, end = check_schedule(request)
    with tempfile.TemporaryDirectory(prefix="tlp-schedule-") as scratch:
        template = compile_pipeline(cloud, os.path.join(scratch, "pipeline.yaml"))
        if not cloud.on_vertex:
            return _create_kfp_recurring_run(run, cloud, request, template, start, end, echo)
        job = _vertex_job(run, dataclasses.replace(cloud, display_name=request.name), template)
        schedule = job.create_schedule(
            cron=request.cron, display_name=request.name, max_concurrent_run_count=request.max_concurrent,
            max_run_count=request.max_runs, start_time=start and start.isoformat(), end_time=end and end.isoformat(),
            service_account=cloud.service_account or None, network=cloud.network or None,
        )
    echo(f"created schedule {schedule.resource_name} ({request.name}): {request.cron}; next runs "
         f"{', '.join(next_runs(request.cron))}\n  console: {CONSOLE}/pipelines/schedules?project={cloud.project}")
    return schedule.resource_name


def _create_kfp_recurring_run(run, cloud, request, template, start, end, echo) -> str:
    zone, fields = check_cron(request.cron)
    if zone:
        raise ConfigError("Kubeflow Pipelines cron schedules run in the cluster's time zone; drop TZ= from --cron.")
    client = _kfp_client(cloud)
    experiment = client.create_experiment(PIPELINE_NAME)
    recurring = client.create_recurring_run(
        experiment_id=experiment.experiment_id, job_name=request.name,
        cron_expression=f"0 {fields}",  # KFP's cron has a leading seconds field
        pipeline_package_path=template, params=run.pipeline_arguments(),
        max_concurrency=request.max_concurrent, start_time=start and start.isoformat(),
        end_time=end and end.isoformat(), enable_caching=cloud.enable_caching, enabled=True,
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


def list_schedules(cloud: CloudConfig) -> list[ScheduleInfo]:
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


def _find_schedule(cloud: CloudConfig, name: str):
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


def change_schedule(cloud: CloudConfig, name: str, action: str) -> str:
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
