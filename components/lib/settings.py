"""Every option of ``tlp``, declared once, in typed groups.

To add an option: declare it in its group below (type, default, help, bounds, the commands
that offer it, the steps that read it, ``lineage=True`` if registered versions should record
it), then read it where it is used (``settings.head.dropout``). The flag, its check, the
pipeline parameter, what the step receives and the registry lineage follow from the
declaration; regenerate the golden IR and the README table (the tests say how).

The groups a run trains with form ``Settings``; the runner-side groups (local run, images,
hardware, cloud, schedule) are declared the same way and used by the runners and the CLI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tlp.components.lib import specs
from tlp.components.lib.augment import canonical as canonical_augment
from tlp.components.lib.options import Group, NotPassedToStep, group_from_values, option, options_of
from tlp.components.lib.steps import (
    DATA_CHECKS,
    DATA_FINGERPRINT,
    DATA_PREP,
    EVALUATION,
    FEATURE_EXTRACTION,
    FINE_TUNING,
    REGISTRATION,
)

TRAINING_COMMANDS = ("run", "submit", "schedule create")
CLOUD_COMMANDS = ("submit", "schedule create")
MODELS_COMMANDS = ("models list", "models show", "models promote", "models rollback")
BOTH_PHASES = (FEATURE_EXTRACTION, FINE_TUNING)


def _data_spec(value: str) -> str:
    return value if value == "auto" else str(specs.parse_data_spec(value))


def _weights_spec(value: str) -> str:
    return value if value == "auto" else specs.parse_weights_spec(value)


def _registry_uri(value: str) -> str:
    return value if value in ("", "vertex") else specs.check_registry_uri(value)


@dataclass(frozen=True)
class DataOptions(Group):
    GROUP = "data"
    data: str = option(
        "auto", "auto (tfds:cats_vs_dogs if cached or reachable, else sample), tfds:NAME, folder:PATH (one "
        "subfolder per class; local or gs://), sample[:N] (generated, N images per class)",
        commands=TRAINING_COMMANDS, steps=(DATA_FINGERPRINT, DATA_PREP), check=_data_spec,
        compiled_default=specs.DEFAULT_DATA,
    )
    max_skipped_fraction: float = option(
        0.1, "fail data prep if more than this fraction of image files are unreadable",
        commands=TRAINING_COMMANDS, steps=(DATA_PREP,), minimum=0.0, maximum=1.0,
    )
    # Where data prep's Beam pipeline runs. On submit the empty Dataflow settings take the cloud
    # options' values (pipelines/cloud.py: plan_run), so they reach the step as parameters.
    data_prep_runner: str = option(
        "direct", "where data prep's Beam pipeline runs: direct (this machine, every core) or dataflow (Google "
        "Cloud Dataflow, the --dataflow-* options)", commands=TRAINING_COMMANDS, steps=(DATA_PREP,),
        choices=("direct", "dataflow"),
    )
    dataflow_max_workers: int = option(
        10, "most Dataflow workers for data prep (autoscaled)", commands=TRAINING_COMMANDS, steps=(DATA_PREP,),
        minimum=1, maximum=4000,
    )
    dataflow_machine_type: str = option(
        "n1-standard-4", "Dataflow worker machine type", commands=TRAINING_COMMANDS, steps=(DATA_PREP,),
    )
    dataflow_project: str = option(
        "", "Dataflow project (default: --project)", commands=TRAINING_COMMANDS, steps=(DATA_PREP,),
    )
    dataflow_region: str = option(
        "", "Dataflow region (default: --region)", commands=TRAINING_COMMANDS, steps=(DATA_PREP,),
    )
    dataflow_service_account: str = option(
        "", "service account Dataflow's workers run as (default: --service-account)", commands=TRAINING_COMMANDS,
        steps=(DATA_PREP,),
    )
    dataflow_network: str = option(
        "", "VPC network of Dataflow's workers (default: --network)", commands=TRAINING_COMMANDS, steps=(DATA_PREP,),
    )
    dataflow_temp_location: str = option(
        "", "gs:// folder for Dataflow's temp and staging files (default: under the pipeline root)",
        commands=TRAINING_COMMANDS, steps=(DATA_PREP,),
    )
    dataflow_image: str = option(
        "", "Dataflow workers' container (default: IMAGE_REPO/tlp-dataflow:IMAGE_TAG, containers/dataflow.Dockerfile)",
        commands=TRAINING_COMMANDS, steps=(DATA_PREP,),
    )


@dataclass(frozen=True)
class CheckOptions(Group):
    """Checks of the data against the champion's, before any training (from metadata: cheap)."""

    GROUP = "data checks"
    max_data_drop: float = option(
        0.10, "stop before training if the data has this much fewer photos than the champion's (0.1: 10%)",
        commands=TRAINING_COMMANDS, steps=(DATA_CHECKS,), minimum=0.0, maximum=1.0,
    )
    max_class_shift: float = option(
        0.15, "stop before training if a class's share of the photos moved this much from the champion's",
        commands=TRAINING_COMMANDS, steps=(DATA_CHECKS,), minimum=0.0, maximum=1.0,
    )
    max_image_drift: float = option(
        0.0, "stop before training if the new photos' drift AUC against the champion's reference features reaches "
        "this (0: off; the AUC is measured and reported either way)", commands=TRAINING_COMMANDS,
        steps=(DATA_CHECKS,), minimum=0.0, maximum=1.0,
    )


@dataclass(frozen=True)
class ModelOptions(Group):
    GROUP = "model"
    weights: str = option(
        "auto", "auto (imagenet if cached or reachable, else none), imagenet, none (random), or a .h5 weights "
        "file of the base without its top", commands=TRAINING_COMMANDS, steps=(FEATURE_EXTRACTION,),
        check=_weights_spec, lineage=True, compiled_default="imagenet",
    )
    base: str = option(
        "MobileNetV2", "the Keras application used as the frozen base", commands=TRAINING_COMMANDS,
        steps=(FEATURE_EXTRACTION,), choices=tuple(specs.BASES), lineage=True,
    )
    alpha: float = option(
        1.0, "MobileNet width multiplier", commands=TRAINING_COMMANDS, steps=(FEATURE_EXTRACTION,),
        above=0.0, maximum=2.0, lineage=True,
    )
    image_size: int = option(
        160, "square input side in pixels", commands=TRAINING_COMMANDS, steps=(DATA_PREP,),
        minimum=specs.MIN_IMAGE_SIZE, maximum=1024, lineage=True,
    )


@dataclass(frozen=True)
class HeadOptions(Group):
    GROUP = "head"
    dropout: float = option(
        0.2, "dropout before the Dense layer", commands=TRAINING_COMMANDS, steps=(FEATURE_EXTRACTION,),
        minimum=0.0, below=1.0, lineage=True,
    )


@dataclass(frozen=True)
class TrainingOptions(Group):
    GROUP = "training"
    epochs: int = option(
        10, "feature-extraction epochs", commands=TRAINING_COMMANDS, steps=(FEATURE_EXTRACTION,), minimum=1,
        maximum=10_000, lineage=True,
    )
    learning_rate: float = option(
        1e-4, "RMSprop learning rate (fine-tuning uses a tenth)", commands=TRAINING_COMMANDS, steps=BOTH_PHASES,
        above=0.0, maximum=10.0, lineage=True,
    )
    batch_size: int = option(
        32, "batch size per replica (global batch = this x replicas)", commands=TRAINING_COMMANDS,
        steps=BOTH_PHASES, minimum=1, maximum=65_536, lineage=True,
    )
    seed: int = option(
        42, "seed of the split, shuffling, initialisation and the gap's sample of training photos",
        commands=TRAINING_COMMANDS, steps=(DATA_PREP, *BOTH_PHASES, EVALUATION), minimum=0, lineage=True,
    )
    augment: str = option(
        "", "augment the training images (both phases): flip, rotate:F, zoom:F, contrast:F, comma-separated, or "
        "tutorial (= flip,rotate:0.2); feature extraction then runs the base every epoch (the tutorial's cost)",
        commands=TRAINING_COMMANDS, steps=BOTH_PHASES, check=canonical_augment, lineage=True,
    )


@dataclass(frozen=True)
class FineTuningOptions(Group):
    GROUP = "fine-tuning"
    fine_tune_epochs: int = option(
        10, "fine-tuning epochs (0 skips fine-tuning)", commands=TRAINING_COMMANDS, steps=(FINE_TUNING,),
        minimum=0, maximum=10_000, lineage=True,
    )
    fine_tune_at: int = option(
        100, "first base layer to unfreeze (MobileNetV2 has 154 layers)", commands=TRAINING_COMMANDS,
        steps=(FINE_TUNING,), minimum=0, lineage=True,
    )
    no_cut_cache: bool = option(
        False, "train the whole model on images every epoch instead of the layers above --fine-tune-at on their "
        "cached inputs (same result; the cut cache is faster)", commands=TRAINING_COMMANDS, steps=(FINE_TUNING,),
    )


@dataclass(frozen=True)
class RuntimeOptions(Group):
    GROUP = "runtime"
    devices: str = option(
        # Every model pass reads it: feature extraction, fine-tuning, evaluation, the champion's re-measurement.
        "auto", "auto (all GPUs, else CPU), gpu[:N], cpu:N (N logical CPU devices)", commands=TRAINING_COMMANDS,
        steps=(FEATURE_EXTRACTION, FINE_TUNING, EVALUATION, REGISTRATION),
        check=lambda value: specs.parse_devices(value) and None,
    )
    mixed_precision: str = option(
        "float32", "Keras mixed precision for both training steps (mixed_float16 on GPUs, mixed_bfloat16 on "
        "TPUs and recent GPUs)", commands=TRAINING_COMMANDS, steps=BOTH_PHASES, choices=specs.PRECISIONS,
        lineage=True,
    )
    xla: bool = option(False, "compile the training steps with XLA", commands=TRAINING_COMMANDS, steps=BOTH_PHASES)
    steps_per_execution: int = option(
        1, "batches per compiled call (try 8-32 on GPUs)", commands=TRAINING_COMMANDS, steps=BOTH_PHASES,
        minimum=1, maximum=10_000,
    )


@dataclass(frozen=True)
class GateOptions(Group):
    GROUP = "gate"
    max_gap: float = option(
        0.05, "largest allowed train - validation accuracy (train - test in a tuned run: validation chose its "
        "trial)", commands=TRAINING_COMMANDS, steps=(EVALUATION,), minimum=0.0, maximum=1.0,
    )
    min_accuracy: float = option(
        0.9, "smallest allowed test accuracy", commands=TRAINING_COMMANDS, steps=(EVALUATION,),
        minimum=0.0, maximum=1.0,
    )
    # Scoring every training photo for one accuracy would make evaluation grow with the whole data
    # set; a sample of 20,000 puts a 95% interval of at most +-0.7 points on it.
    gap_sample: int = option(
        20_000, "training photos scored for the gap's train accuracy: a sample drawn with --seed (every photo when "
        "the split is smaller); its 95% interval is reported", commands=TRAINING_COMMANDS, steps=(EVALUATION,),
        minimum=1, maximum=100_000_000,
    )


@dataclass(frozen=True)
class RegistryOptions(Group):
    GROUP = "registry"
    registry: str = option(
        "", "registry URI: sqlite:///PATH.db or http(s)://MLFLOW (MLflow), vertex://PROJECT/REGION[/MODEL]; "
        "default sqlite:///OUTPUT_DIR/registry.db locally, vertex in the cloud",
        commands=(*TRAINING_COMMANDS, *MODELS_COMMANDS, "predict", "serve", "deploy", "drift", "export"),
        steps=(DATA_CHECKS, REGISTRATION), check=_registry_uri,
    )
    model_name: str = option(
        "", "registered model name (default: from the data: cats_vs_dogs, sample, the folder's name)",
        commands=TRAINING_COMMANDS, steps=(DATA_CHECKS, REGISTRATION),
    )
    champion_tolerance: float = option(
        0.0, "a new version takes the champion alias if its test accuracy >= the champion's on the same test "
        "split minus this", commands=TRAINING_COMMANDS, steps=(REGISTRATION,), minimum=0.0, maximum=1.0,
    )


PIPELINE_GROUPS = (
    DataOptions, CheckOptions, ModelOptions, HeadOptions, TrainingOptions, FineTuningOptions, RuntimeOptions,
    GateOptions, RegistryOptions,
)


@dataclass(frozen=True)
class Settings:
    """What a run trains with: the pipeline's parameters, grouped."""

    data: DataOptions = field(default_factory=DataOptions)
    checks: CheckOptions = field(default_factory=CheckOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    head: HeadOptions = field(default_factory=HeadOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)
    fine_tuning: FineTuningOptions = field(default_factory=FineTuningOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    gate: GateOptions = field(default_factory=GateOptions)
    registry: RegistryOptions = field(default_factory=RegistryOptions)

    @classmethod
    def from_values(cls, values: dict, *, check: bool = True) -> Settings:
        """Settings from a flat mapping of option names to values (unknown names are refused)."""
        known = {opt.name for group in PIPELINE_GROUPS for opt in options_of(group)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise specs.ConfigError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        groups = {name: group_from_values(group, values, check=check) for name, group in _GROUPS.items()}
        settings = cls(**groups)
        if check:
            settings.check()
        return settings

    @classmethod
    def for_step(cls, step: str, values: dict) -> Settings:
        """The settings a pipeline step received (``step_values``), checked again where they run.
        Options the step does not receive cannot be read (they raise instead of defaulting)."""
        received = step_values(step, values, strict=True)
        groups = {}
        for name, group_class in _GROUPS.items():
            group = group_from_values(group_class, received)
            missing = {
                opt.name: NotPassedToStep(opt.name, step)
                for opt in options_of(group_class)
                if step not in opt.spec.steps
            }
            groups[name] = dataclasses.replace(group, **missing) if missing else group
        return cls(**groups)

    def values(self) -> dict:
        """Flat option name -> value, every pipeline option."""
        return {
            opt.name: object.__getattribute__(getattr(self, name), opt.name)
            for name, group_class in _GROUPS.items()
            for opt in options_of(group_class)
        }

    def replace(self, **values) -> Settings:
        """A copy with some options changed, by option name (``replace(data="sample")``)."""
        return Settings.from_values({**self.values(), **values}, check=False)

    def check(self) -> None:
        """The rules that involve more than one option (each option's own rules ran already)."""
        model, weights = self.model, self.model.weights
        if weights != "auto":
            specs.check_base(model.base, model.alpha, model.image_size, weights)
            specs.check_precision(self.runtime.mixed_precision, weights)

    def lineage(self) -> dict:
        """The options a registered version records (declared ``lineage=True``) that these
        settings hold (a step's settings hold only what the step received)."""
        values = self.values()
        return {
            opt.name: values[opt.name]
            for group in PIPELINE_GROUPS
            for opt in options_of(group)
            if opt.spec.lineage and not isinstance(values[opt.name], NotPassedToStep)
        }


# Settings' attribute name -> its group class.
_GROUPS = {group_field.name: group_field.default_factory for group_field in dataclasses.fields(Settings)}


def pipeline_options():
    """Every option that is a pipeline parameter, in declaration order."""
    return [opt for group in PIPELINE_GROUPS for opt in options_of(group) if opt.spec.steps]


def step_values(step: str, values: dict, *, strict: bool = False) -> dict:
    """The options ``step`` reads, taken from ``values`` (flat). ``strict``: refuse others."""
    wanted = {opt.name for opt in pipeline_options() if step in opt.spec.steps}
    if strict:
        extra = sorted(set(values) - wanted)
        if extra:
            raise specs.ConfigError(
                f"the {step} step does not take option(s) {', '.join(extra)}; it takes {', '.join(sorted(wanted))}."
            )
    return {name: value for name, value in values.items() if name in wanted}


# --- the runner's groups: not pipeline parameters ----------------------------------------------


@dataclass(frozen=True)
class LocalRunOptions(Group):
    GROUP = "local run"
    output_dir: str = option(
        "tlp-runs", "where runs, outputs and the local registry go", commands=("run", "component", *MODELS_COMMANDS)
    )
    runner: str = option(
        "subprocess", "subprocess: this environment; docker: each step in its container image (needs a Docker "
        "engine)", commands=("run",), choices=("subprocess", "docker"),
    )
    summary_json: str = option("", "also write the summary as JSON to this file", commands=("run",))
    verbose: bool = option(
        False, "stream every step's full output (kfp's executor input, TensorFlow's start-up lines) instead of "
        "one line per step, its progress and epochs; the full output is in RUN_DIR/logs either way",
        commands=("run", "component"),
    )


@dataclass(frozen=True)
class ImageOptions(Group):
    GROUP = "images"
    image_repo: str = option(
        "tlp", "container image repository, e.g. us-docker.pkg.dev/PROJECT/tlp",
        commands=("run", "compile", *CLOUD_COMMANDS),
    )
    image_tag: str = option(
        "", "image tag (default: the project version)", commands=("run", "compile", *CLOUD_COMMANDS)
    )


@dataclass(frozen=True)
class HardwareOptions(Group):
    """Where the model passes run on Vertex AI (the local runner ignores it): fine-tuning, feature
    extraction and evaluation on all of it, registration (the champion's re-measurement) on one
    of its machines; data prep and data checks stay on the default machine.

    ``gpus`` GPUs of type ``accelerator`` on each of ``replicas`` machines. With ``machine_type``
    set or more than one replica, each such step runs as a Vertex AI custom job, which takes an
    exact machine type and gives replicas beyond the first a TF_CONFIG; otherwise the step asks
    the pipeline for the GPUs and Vertex AI picks the machine.
    """

    GROUP = "hardware"
    gpus: int = option(0, "GPUs per machine of the model passes (feature extraction, fine-tuning, evaluation, "
                       "registration; MirroredStrategy over them)",
                       commands=("compile", *CLOUD_COMMANDS), minimum=0, maximum=16)
    accelerator: str = option("", "GPU type, a Vertex AI AcceleratorType such as NVIDIA_L4 or NVIDIA_TESLA_T4",
                              commands=("compile", *CLOUD_COMMANDS))
    machine_type: str = option("", "machine type of the model passes, e.g. g2-standard-8 (runs them as custom jobs)",
                               commands=("compile", *CLOUD_COMMANDS))
    replicas: int = option(1, "machines of fine-tuning, feature extraction and evaluation; more than 1 runs custom "
                           "jobs with MultiWorkerMirroredStrategy",
                           commands=("compile", *CLOUD_COMMANDS), minimum=1, maximum=64)
    spot: bool = option(False, "run fine-tuning's custom job on Spot VMs (cheaper, may be preempted; it resumes from "
                        "its last finished epoch)", commands=("compile", *CLOUD_COMMANDS))
    retries: int = option(2, "times Vertex AI retries a failed training step (each retry resumes from the last "
                          "finished epoch)", commands=("compile", *CLOUD_COMMANDS), minimum=0, maximum=10)

    @property
    def as_custom_job(self) -> bool:
        return bool(self.machine_type) or self.replicas > 1 or self.spot


@dataclass(frozen=True)
class CloudOptions(Group):
    GROUP = "cloud"
    project: str = option("", "Google Cloud project ID (default: $GOOGLE_CLOUD_PROJECT or $CLOUDSDK_CORE_PROJECT)",
                          commands=(*CLOUD_COMMANDS, "schedule list", "schedule change", "deploy"))
    region: str = option("", "Vertex AI region, e.g. us-central1 (default: $GOOGLE_CLOUD_REGION or "
                         "$CLOUDSDK_COMPUTE_REGION)",
                           commands=(*CLOUD_COMMANDS, "schedule list", "schedule change", "deploy"))
    api_endpoint: str = option("", "Vertex AI API endpoint (private or regional), host[:port] or URL",
                               commands=(*CLOUD_COMMANDS, "schedule list", "schedule change", "deploy"))
    kfp_host: str = option("", "submit to this Kubeflow Pipelines API instead of Vertex AI",
                           commands=(*CLOUD_COMMANDS, "schedule list", "schedule change"))
    pipeline_root: str = option("", "gs://BUCKET/PATH where the run keeps its data and models", commands=CLOUD_COMMANDS)
    service_account: str = option("", "service account the run (and its custom jobs, or the serving container) runs "
                                  "as", commands=(*CLOUD_COMMANDS, "deploy"))
    labels: list = option([], "labels on the run", commands=CLOUD_COMMANDS, repeated=True,
                          metavar="KEY=VALUE[,KEY=VALUE]")
    no_cache: bool = option(False, "re-run every step instead of reusing cached results", commands=CLOUD_COMMANDS)
    network: str = option("", "VPC network to peer, projects/NUMBER/global/networks/NAME (deploy: a private "
                          "endpoint)", commands=(*CLOUD_COMMANDS, "deploy"))
    display_name: str = option("", "run name (default transfer-learning-TIMESTAMP)", commands=("submit",))
    wait: bool = option(False, "follow the run's state until it ends", commands=("submit",))

    @property
    def on_vertex(self) -> bool:
        return not self.kfp_host


@dataclass(frozen=True)
class ScheduleOptions(Group):
    GROUP = "schedule"
    cron: str = option("", '"[TZ=Area/City ]minute hour day-of-month month day-of-week", e.g. '
                       '"TZ=Europe/Berlin 0 3 * * 1"', commands=("schedule create",))
    name: str = option("", "schedule name (schedules are listed, paused and deleted by it)",
                       commands=("schedule create",))
    max_concurrent: int = option(1, "runs at once", commands=("schedule create",), minimum=1, maximum=100)
    max_runs: int = option(0, "stop after this many runs (0: no limit)", commands=("schedule create",), minimum=0)
    start: str = option("", "first possible run, ISO 8601 (default: now)", commands=("schedule create",))
    end: str = option("", "no runs after, ISO 8601 (default: never)", commands=("schedule create",))


@dataclass(frozen=True)
class ServeOptions(Group):
    GROUP = "serve"
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)", commands=("serve",))
    port: int = option(8080, "port ($AIP_HTTP_PORT wins, as Vertex AI sets it)", commands=("serve",), minimum=0,
                       maximum=65_535)
    route_name: str = option("", "model name in the routes, /v1/models/NAME:predict (default: the registered name, "
                             "or 'model')", commands=("serve",), flag="--name")
    max_batch: int = option(32, "most images run together: concurrent requests are batched up to this",
                            commands=("serve",), minimum=1, maximum=4096)
    max_latency_ms: float = option(5.0, "longest wait for a batch to fill, in milliseconds", commands=("serve",),
                                   minimum=0.0, maximum=10_000.0)
    max_body_mb: float = option(32.0, "largest request body in MB; larger ones get 413", commands=("serve",),
                                above=0.0, maximum=4096.0)
    drift_every: int = option(
        1000, "recompute the image drift of recent requests (the tlp_image_drift_auc gauge) every this many images, "
        "off the request path; 0: off", commands=("serve",), minimum=0, maximum=10_000_000,
    )
    # At most drift.MAX_NEW, the most new photos the test scores (tests/unit/test_drift_monitor.py keeps them equal).
    drift_window: int = option(500, "recent request images the drift is measured on (the newest are kept)",
                               commands=("serve",), minimum=10, maximum=2_000)
    # Not options: Vertex AI's custom-container routes, set from AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE
    # by the runner (pipelines/serve.py), served besides KServe's own.
    predict_route: str = ""
    health_route: str = ""


# Vertex AI's serving machine, for endpoints and batch prediction jobs alike.
SERVING_MACHINE_TYPE = "n1-standard-2"


@dataclass(frozen=True)
class DeployOptions(Group):
    """``tlp deploy`` and the pipeline's deploy step (``--deploy-endpoint``): this group is what
    ``vertex_deploy.deploy_version`` takes, and what the deploy step receives as one dict."""

    GROUP = "deploy"
    endpoint: str = option("", "Vertex AI endpoint display name; created if missing", commands=("deploy",))
    deploy_endpoint: str = option(
        "", "after registration makes a new champion, deploy it to this Vertex AI endpoint (created if missing; the "
        "replaced version is undeployed once the new one is healthy)", commands=("compile", *CLOUD_COMMANDS),
    )
    serving_machine_type: str = option(SERVING_MACHINE_TYPE, "serving machine type", commands=("deploy",),
                                       flag="--machine-type")
    min_replicas: int = option(1, "fewest serving machines", commands=("deploy",), minimum=1, maximum=1000)
    max_replicas: int = option(1, "most serving machines (autoscaled)", commands=("deploy",), minimum=1, maximum=1000)
    serving_accelerator: str = option("", "serving GPU type, a Vertex AI AcceleratorType such as NVIDIA_TESLA_T4",
                                      commands=("deploy",), flag="--accelerator")
    serving_gpus: int = option(0, "GPUs per serving machine (1 when --accelerator is given)",
                               commands=("deploy",), minimum=0, maximum=16, flag="--gpus")
    traffic: int = option(100, "percent of the endpoint's traffic for this version (canary: the rest stays on the "
                          "current one)", commands=("deploy", "compile", *CLOUD_COMMANDS), minimum=0, maximum=100)
    promote_traffic: bool = option(False, "move 100% of the traffic to this (already deployed) version and undeploy "
                                   "the one it replaces", commands=("deploy",))


@dataclass(frozen=True)
class PredictOptions(Group):
    GROUP = "predict"
    output: str = option("", "write one prediction per image to this .jsonl or .csv file (folders of any size, with "
                         "progress; unreadable files listed with their reason); with --batch-job a gs:// prefix",
                         commands=("predict",))
    json: bool = option(False, "print JSON lines", commands=("predict",))
    batch_job: bool = option(False, "classify a gs:// folder with a Vertex AI BatchPredictionJob (needs --registry "
                             "vertex://PROJECT/REGION and --output gs://...)", commands=("predict",))
    images_per_call: int = option(32, "images per model call when predicting a folder", commands=("predict",),
                                  minimum=1, maximum=4096, flag="--batch-size")
    batch_machine_type: str = option(SERVING_MACHINE_TYPE, "--batch-job machine type", commands=("predict",))
    batch_replicas: int = option(1, "--batch-job machines", commands=("predict",), minimum=1, maximum=1000)


@dataclass(frozen=True)
class ModelsOptions(Group):
    """``tlp models``: reading and steering a registry's versions."""

    GROUP = "models"
    reason: str = option("", "why (recorded on the version with who and when)",
                         commands=("models promote", "models rollback"))
    by: str = option("", "who (default: this machine's user name)", commands=("models promote", "models rollback"))
    models_json: bool = option(False, "print JSON instead of a table", commands=("models list", "models show"),
                               flag="--json")


@dataclass(frozen=True)
class TrackingOptions(Group):
    """Where a run's parameters, metrics and learning curves can be compared with other runs'."""

    GROUP = "tracking"
    experiment: str = option(
        "", "experiment the run is tracked in: an MLflow experiment in the registry's store (local runs), Vertex "
        "AI Experiments (submit) (default: the pipeline's name, transfer-learning)", commands=("run", "submit"),
    )
    tensorboard: str = option(
        "", "Vertex AI TensorBoard, projects/P/locations/R/tensorboards/ID: both training steps run as custom jobs "
        "that stream their TensorBoard logs to it", commands=("compile", *CLOUD_COMMANDS),
    )


@dataclass(frozen=True)
class DriftOptions(Group):
    """``tlp drift``: photos scored against the reference features stored with a model."""

    GROUP = "drift"
    threshold: float = option(0.75, "drifted (exit 4) at this cross-validated AUC or above (0.5: indistinguishable)",
                              commands=("drift",), minimum=0.5, maximum=1.0)
    drift_json: bool = option(False, "print JSON: auc, threshold, drifted, n, most_different", commands=("drift",),
                              flag="--json")


RUNNER_GROUPS: tuple[type[Group], ...] = (
    LocalRunOptions, ImageOptions, HardwareOptions, CloudOptions, ScheduleOptions, ServeOptions, DeployOptions,
    PredictOptions, ModelsOptions, TrackingOptions, DriftOptions,
)


@dataclass(frozen=True)
class TuneOptions(Group):
    """Tuning in one run (components/lib/tuning.py): trials share data prep, the data checks and
    feature extraction per head setting; the best by validation goes on to evaluation."""

    GROUP = "tuning"
    tune: str = option(
        "", 'a grid of trials, e.g. "fine_tune_at=60,100,120 learning_rate=1e-4,3e-5 dropout=0.2,0.4" (a tuned '
        "learning_rate is fine-tuning's; feature extraction keeps --learning-rate)",
        commands=("run", "compile", *CLOUD_COMMANDS), metavar="NAME=V1,V2 ...",
    )
    tune_trials: int = option(0, "draw this many of the grid's points at random with the seed (0: every point, at "
                              "most 64)", commands=("run", "compile", *CLOUD_COMMANDS), minimum=0, maximum=1000)
    tune_parallelism: int = option(4, "trials running at once (Vertex AI; the local runner runs one at a time)",
                                   commands=("run", "compile", *CLOUD_COMMANDS), minimum=1, maximum=64)
    tuner: str = option("grid", "grid: the trials as a ParallelFor in the pipeline; vizier: fine-tuning as a Vertex "
                        "AI hyperparameter tuning job over the same space (--tune-trials trials)",
                        commands=("compile", *CLOUD_COMMANDS), choices=("grid", "vizier"))


RUNNER_GROUPS += (TuneOptions,)
ALL_GROUPS = PIPELINE_GROUPS + RUNNER_GROUPS


def _litert_variants(value: str) -> str:
    return ",".join(specs.parse_litert_variants(value))


@dataclass(frozen=True)
class LiteRTOptions(Group):
    """On the device (components/lib/litert.py): .tflite variants of the fine-tuned model, measured and gated.
    Runner options, not pipeline parameters: the step is added only when asked for, so the default
    compiled pipeline stays as it is."""

    GROUP = "litert"
    export_litert: str = option(
        "", "also export the model for LiteRT (phones, small devices): float32, float16, dynamic, int8 (comma-"
        "separated); each is scored on the test split and registered only within --max-quantization-drop",
        commands=("run", "compile", *CLOUD_COMMANDS), metavar="VARIANTS", check=_litert_variants,
    )
    max_quantization_drop: float = option(
        0.01, "largest allowed test accuracy a LiteRT variant may lose against the Keras model",
        commands=("run", "compile", *CLOUD_COMMANDS, "export"), minimum=0.0, maximum=1.0,
    )


RUNNER_GROUPS += (LiteRTOptions,)
ALL_GROUPS = PIPELINE_GROUPS + RUNNER_GROUPS
