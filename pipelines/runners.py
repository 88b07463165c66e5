"""The local runner: the whole pipeline through kfp's local runner, in this environment
(SubprocessRunner) or in the component images (DockerRunner). Settings arrive resolved and
checked (``resolve``, ``checks``); the environment is read in ``environment``."""

from __future__ import annotations

import os
import time

from tlp.components.lib.settings import ImageOptions, LiteRTOptions, LocalRunOptions, Settings, TrackingOptions
from tlp.components.lib.specs import ServiceError
from tlp.components.lib.tuning import TuningPlan
from tlp.pipelines import docker_runner, environment, tracking
from tlp.pipelines.console import routed_output
from tlp.pipelines.resolve import default_registry
from tlp.pipelines.summary import summarize
from tlp.pipelines.training import PIPELINE_NAME, create_pipeline


def pipeline_root(output_dir: str) -> str:
    return os.path.join(os.path.abspath(output_dir), "pipeline-root")


def run_local(
    settings: Settings, local: LocalRunOptions, images: ImageOptions, notes: list[str],
    tracked: TrackingOptions | None = None, tuning: TuningPlan | None = None, litert: LiteRTOptions | None = None,
) -> dict:
    """Runs the whole pipeline through kfp.local and tracks it as an MLflow run (experiment
    ``tracked.experiment``, default the pipeline's name). Returns the summary."""
    from kfp import local as kfp_local

    root = pipeline_root(local.output_dir)
    os.makedirs(root, exist_ok=True)
    environment.quiet_tensorflow()  # children inherit it
    if local.runner == "docker":
        kfp_runner = docker_runner.make_runner(settings, local, images)
    else:
        kfp_runner = kfp_local.SubprocessRunner(use_venv=False)
    kfp_local.init(runner=kfp_runner, pipeline_root=root)
    before = set(os.listdir(root))
    started, started_at = time.monotonic(), time.time()
    with routed_output(lambda: new_run_dir(root, before), verbose=local.verbose) as console:
        create_pipeline(images, tuning=tuning, litert=litert)(**settings.values())
    run_dir = new_run_dir(root, before)
    if run_dir is None:
        raise ServiceError(f"kfp's local runner wrote no run folder under {root}; check that the folder is writable.")
    summary = summarize(run_dir, settings, notes, console.seconds)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    experiment = (tracked or TrackingOptions()).experiment or PIPELINE_NAME
    uri = tracking.tracking_uri(settings.registry.registry, default_registry(local.output_dir))
    summary["tracking"] = tracking.track_run(summary, settings, uri, experiment, started_at)
    return summary


def new_run_dir(root: str, before: set, prefix: str = PIPELINE_NAME) -> str | None:
    new = sorted(set(os.listdir(root)) - before)
    runs = [n for n in new if n.startswith(prefix)]
    return os.path.join(root, runs[-1]) if runs else None
