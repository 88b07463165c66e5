"""Runners: the only place that reads the environment, resolves ``auto`` settings, picks local
paths and starts kfp. The pipeline factory and the components never do."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field

from tlp.components.lib import specs
from tlp.components.lib.registry import check_registry_uri
from tlp.pipelines import docker_runner
from tlp.pipelines.training import PIPELINE_NAME, STEP_NAMES, create_pipeline

DEFAULT_OUTPUT_DIR = "tlp-runs"
# Hosts the real downloads come from; "reachable" means a TCP connection opens quickly.
WEIGHTS_HOST = ("storage.googleapis.com", 443)
TFDS_HOSTS = {"cats_vs_dogs": ("download.microsoft.com", 443)}


class RunFailed(RuntimeError):
    """A pipeline step failed; the message says which and where its outputs are."""


@dataclass
class RunConfig:
    """Everything ``tlp run`` takes. Pipeline parameters first, then runner settings."""

    data: str = "auto"
    weights: str = "auto"
    base: str = "MobileNetV2"
    alpha: float = 1.0
    image_size: int = 160
    batch_size: int = 32
    epochs: int = 10
    fine_tune_epochs: int = 10
    fine_tune_at: int = 100
    learning_rate: float = 1e-4
    dropout: float = 0.2
    devices: str = "auto"
    max_gap: float = 0.05
    min_accuracy: float = 0.90
    model_name: str = ""
    seed: int = 42
    max_skipped_fraction: float = 0.10
    champion_tolerance: float = 0.0
    mixed_precision: str = "float32"
    xla: bool = False
    steps_per_execution: int = 1
    registry: str = ""  # default: sqlite:///<output_dir>/registry.db
    output_dir: str = DEFAULT_OUTPUT_DIR
    notes: list[str] = field(default_factory=list)

    PIPELINE_FIELDS = (
        "data", "weights", "base", "alpha", "image_size", "batch_size", "epochs",
        "fine_tune_epochs", "fine_tune_at", "learning_rate", "dropout", "devices", "max_gap",
        "min_accuracy", "registry", "model_name", "seed", "max_skipped_fraction",
        "champion_tolerance", "mixed_precision", "xla", "steps_per_execution",
    )

    def pipeline_arguments(self) -> dict:
        return {name: getattr(self, name) for name in self.PIPELINE_FIELDS}


# --- deciding `auto` ------------------------------------------------------------------------


def reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def imagenet_weights_cached(base: str, alpha: float, image_size: int) -> bool:
    cache = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "models")
    if base == "MobileNetV2":
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{image_size}_no_top.h5"
        return os.path.isfile(os.path.join(cache, name))
    prefix = base.lower().replace("v2", "_v2").replace("v3", "_v3")
    return os.path.isdir(cache) and any(n.lower().startswith(prefix) for n in os.listdir(cache))


def tfds_cached(name: str) -> bool:
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name).is_prepared()
    except Exception:  # unknown name or broken install: not cached, the explicit path reports it
        return False


def resolve_auto(config: RunConfig, probe=reachable) -> RunConfig:
    """Replaces ``auto`` data/weights with what can actually be used here, with a note why."""
    notes = list(config.notes)
    data, weights = config.data, config.weights
    if data == "auto":
        name = specs.DEFAULT_DATA.split(":", 1)[1]
        if tfds_cached(name):
            data, why = specs.DEFAULT_DATA, "found in the TFDS cache"
        elif probe(*TFDS_HOSTS[name]):
            data, why = specs.DEFAULT_DATA, "download host reachable"
        else:
            data, why = "sample", f"{specs.DEFAULT_DATA} is neither cached nor reachable (offline)"
        notes.append(f"--data auto -> {data} ({why})")
    if weights == "auto":
        if imagenet_weights_cached(config.base, config.alpha, config.image_size):
            weights, why = "imagenet", "found in the Keras cache"
        elif probe(*WEIGHTS_HOST):
            weights, why = "imagenet", "download host reachable"
        else:
            weights, why = "none", "ImageNet weights neither cached nor reachable (offline): random weights"
        notes.append(f"--weights auto -> {weights} ({why})")
    return dataclasses.replace(config, data=data, weights=weights, notes=notes)


# --- checking everything before anything runs -----------------------------------------------


def validate(config: RunConfig, check_layers: bool = True, local: bool = True) -> RunConfig:
    """Raises ConfigError (one sentence) on any bad setting. Returns the config normalised.
    ``local``: the run happens on this machine (not submitted to the cloud)."""
    data = specs.parse_data_spec(config.data)
    weights = specs.parse_weights_spec(config.weights)
    specs.check_base(config.base, config.alpha, config.image_size, weights)
    specs.check_training_params(
        batch_size=config.batch_size, epochs=config.epochs,
        fine_tune_epochs=config.fine_tune_epochs, learning_rate=config.learning_rate,
        dropout=config.dropout, fine_tune_at=config.fine_tune_at,
    )
    specs.check_gate(config.max_gap, config.min_accuracy)
    if not 0.0 <= config.max_skipped_fraction <= 1.0:
        raise specs.ConfigError(
            f"--max-skipped-fraction {config.max_skipped_fraction!r} must lie between 0 and 1 (default 0.1)."
        )
    specs.parse_devices(config.devices)
    specs.check_accelerator_options(config.mixed_precision, config.xla, config.steps_per_execution, weights)
    if data.kind == "folder" and not data.path.startswith("gs://"):
        _check_folder(data.path)
    registry = config.registry or "sqlite:///" + os.path.join(
        os.path.abspath(config.output_dir), "registry.db"
    )
    registry = check_registry_uri(registry)
    if local and registry.startswith("vertex://"):
        _check_local_vertex_registry(registry)
    if check_layers and config.fine_tune_epochs > 0:
        from tlp.components.lib.model import base_layer_count

        count = base_layer_count(config.base, config.alpha, config.image_size)
        specs.check_fine_tune_at(config.fine_tune_at, count, config.base)
    return dataclasses.replace(config, data=str(data), weights=weights, registry=registry)


def _check_local_vertex_registry(uri: str) -> None:
    """A local run uploads its model to Vertex AI: say what is missing before training, not after."""
    from tlp.components.lib.vertex_registry import parse_vertex_uri
    from tlp.pipelines.cloud import check_credentials

    if "staging_bucket" not in parse_vertex_uri(uri).options:
        raise specs.ConfigError(
            f"--registry {uri}: a local run's model is uploaded to Cloud Storage first; add "
            "?staging_bucket=gs://BUCKET to the URI."
        )
    check_credentials()


def _check_folder(path: str) -> None:
    from tlp.components.lib.images import IMAGE_EXTENSIONS

    if not os.path.isdir(path):
        raise specs.ConfigError(
            f"--data folder:{path} is not a directory; give a folder holding one subfolder of "
            "images per class."
        )
    classes = {}
    for name in sorted(os.listdir(path)):
        class_dir = os.path.join(path, name)
        if os.path.isdir(class_dir) and not name.startswith("."):
            classes[name] = sum(
                1
                for _root, _dirs, files in os.walk(class_dir, followlinks=True)
                for f in files
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
    with_images = [name for name, count in classes.items() if count]
    if len(with_images) < 2:
        found = ", ".join(f"{n!r} ({c} images)" for n, c in classes.items()) or "no subfolders"
        raise specs.ConfigError(
            f"--data folder:{path} has {len(with_images)} class folder(s) with images ({found}); "
            "put each class's images in its own subfolder, at least two classes."
        )


# --- running through kfp.local --------------------------------------------------------------


class _StepClock(logging.Filter):
    """Times each task from kfp.local's own 'Executing task' / 'finished' log records.
    A filter on the root logger survives kfp's swapping of handlers."""

    pattern = re.compile(r"Task .*?'([\w-]+)'.* finished with status|Executing task .*?'([\w-]+)'")

    def __init__(self):
        super().__init__()
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.failed: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(record.getMessage()))
        match = self.pattern.search(message)
        if match and match.group(2):
            self.started[match.group(2)] = record.created
        elif match and match.group(1):
            task = match.group(1)
            self.seconds[task] = round(record.created - self.started.get(task, record.created), 2)
            if "FAILURE" in message:
                self.failed = task
        return True


class _TailTee:
    """Passes kfp's output through to the terminal and keeps the last lines, so a failed step's
    own error sentence can be repeated at the end instead of "see above"."""

    def __init__(self, stream, keep: int = 400):
        self.stream, self.lines, self._partial = stream, collections.deque(maxlen=keep), ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        *complete, self._partial = (self._partial + text).split("\n")
        self.lines.extend(complete)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(ConfigError|TrainingDivergedError|\w+Error): (.+)$")


def step_error(lines) -> str | None:
    """The last exception message printed by a failed step (our own error types first)."""
    found = [m for m in map(_ERROR_LINE.match, lines) if m]
    ours = [m for m in found if m.group(1) in ("ConfigError", "TrainingDivergedError")]
    chosen = (ours or found or [None])[-1]
    return chosen.group(2).strip() if chosen else None


@contextlib.contextmanager
def failures_explained(what: str, clock: _StepClock | None = None, run_dir_of=None):
    """Runs a kfp.local call; on failure raises RunFailed naming the step and its error."""
    tee = _TailTee(sys.stdout)
    try:
        with contextlib.redirect_stdout(tee):
            yield
    except RuntimeError as error:
        step = (clock.failed if clock else None) or what
        message = step_error(tee.lines) or "its error is printed above"
        kept = run_dir_of() if run_dir_of else None
        where = f"; outputs of the finished steps are kept in {kept}" if kept else ""
        raise RunFailed(f"step {step} failed: {message}{where}") from error


def run_local(
    config: RunConfig, image_repo: str = "tlp", image_tag: str | None = None, runner: str = "subprocess"
) -> dict:
    """Runs the whole pipeline through kfp.local: SubprocessRunner in this environment (default),
    or DockerRunner with the component images (for users with a Docker engine).

    ``config`` must have been through ``resolve_auto`` and ``validate``. Returns the summary.
    """
    from kfp import local

    output_dir = os.path.abspath(config.output_dir)
    pipeline_root = os.path.join(output_dir, "pipeline-root")
    os.makedirs(pipeline_root, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # children inherit: less C++ noise
    if runner == "docker":
        kfp_runner = docker_runner.make_runner(config)
    else:
        kfp_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=kfp_runner, pipeline_root=pipeline_root)
    before = set(os.listdir(pipeline_root))
    clock = _StepClock()
    root_logger = logging.getLogger()
    root_logger.addFilter(clock)
    started = time.monotonic()
    try:
        with failures_explained("a step", clock, lambda: _new_run_dir(pipeline_root, before)):
            create_pipeline(image_repo, image_tag)(**config.pipeline_arguments())
    finally:
        root_logger.removeFilter(clock)
    run_dir = _new_run_dir(pipeline_root, before)
    summary = summarize(run_dir, config, clock.seconds)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    return summary


def _new_run_dir(pipeline_root: str, before: set) -> str | None:
    new = sorted(set(os.listdir(pipeline_root)) - before)
    runs = [n for n in new if n.startswith(PIPELINE_NAME)]
    return os.path.join(pipeline_root, runs[-1]) if runs else None


def task_outputs(run_dir: str, task: str) -> dict | None:
    """Parameters and artifacts a finished task wrote (kfp's executor_output.json)."""
    path = os.path.join(run_dir, task, "executor_output.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        output = json.load(handle)
    artifacts = {
        name: value["artifacts"][0] for name, value in output.get("artifacts", {}).items()
    }
    return {"parameters": output.get("parameterValues", {}), "artifacts": artifacts}


def summarize(run_dir: str, config: RunConfig, step_seconds: dict) -> dict:
    prep = task_outputs(run_dir, "data-prep")
    tuned = task_outputs(run_dir, "fine-tuning")
    scored = task_outputs(run_dir, "evaluation")
    registered = task_outputs(run_dir, "registration")
    dataset_meta = prep["artifacts"]["dataset"]["metadata"]
    dataset_dir = prep["artifacts"]["dataset"]["uri"]
    with open(os.path.join(dataset_dir, "metadata.json")) as handle:
        full_meta = json.load(handle)
    evaluation = scored["artifacts"]["metrics"]["metadata"]
    gate = scored["artifacts"]["report"]["metadata"]
    return {
        "data": {
            "spec": config.data,
            "class_names": dataset_meta["class_names"],
            "counts": full_meta["counts"],
            "fingerprint": full_meta["fingerprint"],
            "skipped": full_meta["skipped"],
        },
        "weights": config.weights,
        "base": {"name": config.base, "alpha": config.alpha, "image_size": config.image_size},
        "notes": config.notes,
        "metrics": {
            "train_accuracy": evaluation["train_accuracy"],
            "val_accuracy": evaluation["val_accuracy"],
            "test_accuracy": evaluation["test_accuracy"],
            "gap": evaluation["gap"],
            **evaluation,
        },
        "gate": {
            "passed": bool(scored["parameters"]["Output"]),
            "reasons": gate["gate_reasons"],
            "max_gap": config.max_gap,
            "min_accuracy": config.min_accuracy,
        },
        "registered": (
            {
                "registry": registered["parameters"]["registry"],
                "name": registered["parameters"]["name"],
                "version": registered["parameters"]["version"],
                "champion": bool(registered["parameters"]["champion"]),
                "reason": registered["parameters"]["reason"],
            }
            if registered
            else None
        ),
        "replicas": int(tuned["parameters"]["replicas"]),
        "model": tuned["artifacts"]["model"]["uri"],
        # After registration, its copy of the report also says which version and why.
        "report": (registered or scored)["artifacts"]["registered_report" if registered else "report"]["uri"],
        "run_dir": run_dir,
        "steps": {name: step_seconds.get(name) for name in STEP_NAMES if name in step_seconds},
    }


def format_summary(summary: dict) -> str:
    metrics, gate = summary["metrics"], summary["gate"]
    lines = [
        "",
        "=" * 72,
        "tlp run: summary",
        f"  data      {summary['data']['spec']}  classes {summary['data']['class_names']}",
        f"            images {json.dumps({s: sum(c.values()) for s, c in summary['data']['counts'].items()})}"
        f", skipped {len(summary['data']['skipped'])}",
        f"  weights   {summary['weights']}  (base {summary['base']['name']}, alpha "
        f"{summary['base']['alpha']}, {summary['base']['image_size']}px)",
        f"  accuracy  train {metrics['train_accuracy']:.4f}  val {metrics['val_accuracy']:.4f}  "
        f"test {metrics['test_accuracy']:.4f}  gap {metrics['gap']:.4f}",
        f"  gate      {'PASSED' if gate['passed'] else 'FAILED'}",
        *[f"            - {reason}" for reason in gate["reasons"]],
    ]
    registered = summary["registered"]
    if registered:
        champion = " (champion)" if registered["champion"] else ""
        lines.append(
            f"  registered {registered['name']} version {registered['version']}{champion} in {registered['registry']}"
        )
        lines.append(f"            {registered['reason']}")
    else:
        lines.append("  registered nothing (the gate did not pass)")
    lines += [
        f"  replicas  {summary['replicas']} in sync during fine-tuning",
        f"  model     {summary['model']}",
        f"  report    {summary['report']}",
        "  steps     " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["steps"].items() if v is not None),
    ]
    for note in summary.get("notes", []):
        lines.append(f"  note      {note}")
    skipped = summary["data"]["skipped"]
    if skipped:
        lines.append(f"  skipped   {len(skipped)} file(s), each listed with its reason in data.skipped")
    lines.append("=" * 72)
    return "\n".join(lines)
