"""Running one component alone through kfp.local.

kfp's local runner refuses artifact inputs passed straight to a component, so each input
artifact is fed by a ``dsl.importer`` in a one-step pipeline. If the artifact came from an
earlier local run, its metadata (kept by kfp in the task's executor_output.json) is carried
along, so e.g. registration sees the evaluation metrics.
"""

from __future__ import annotations

import json
import os

from kfp import dsl

from tlp.components.catalogue import COMPONENTS
from tlp.components.lib.settings import Settings, step_values
from tlp.components.lib.specs import ConfigError, ServiceError
from tlp.pipelines import environment
from tlp.pipelines.console import routed_output
from tlp.pipelines.resolve import resolve_local
from tlp.pipelines.runners import new_run_dir
from tlp.pipelines.summary import task_outputs

_ARTIFACT_CLASSES = {
    "system.Dataset": dsl.Dataset,
    "system.Model": dsl.Model,
    "system.Metrics": dsl.Metrics,
    "system.ClassificationMetrics": dsl.ClassificationMetrics,
    "system.HTML": dsl.HTML,
    "system.Artifact": dsl.Artifact,
}


def artifact_metadata(path: str) -> dict:
    """Metadata kfp.local recorded for the artifact at ``path``, if it came from a local run."""
    record = os.path.join(os.path.dirname(os.path.abspath(path)), "executor_output.json")
    if not os.path.isfile(record):
        return {}
    with open(record) as handle:
        output = json.load(handle)
    for value in output.get("artifacts", {}).values():
        for artifact in value.get("artifacts", []):
            if os.path.abspath(artifact.get("uri", "")) == os.path.abspath(path):
                return artifact.get("metadata", {})
    return {}


def build_single_pipeline(step_name: str, artifacts: dict[str, str], options: dict):
    """A one-step pipeline: importers for the artifact inputs, then the step's component with
    ``options`` (checked values of the options the step reads)."""
    component = COMPONENTS[step_name]
    inputs = component.component_spec.inputs or {}
    artifact_names = {n for n, s in inputs.items() if "." in s.type}
    unknown = sorted(set(artifacts) - artifact_names)
    if unknown:
        raise ConfigError(
            f"{step_name} has no artifact input(s) {unknown}; its inputs are {sorted(artifact_names)}."
        )
    missing = sorted(n for n in artifact_names if n not in artifacts and not inputs[n].optional)
    if missing:
        raise ConfigError(f"{step_name} needs artifact input(s) {missing}; pass each as --input NAME=PATH.")
    imports = {}
    for name, path in artifacts.items():
        metadata = artifact_metadata(path)
        # Metrics artifacts are metadata only: kfp writes no file for them, only the record.
        if not os.path.exists(path) and not metadata:
            raise ConfigError(f"--input {name}={path} does not exist; give the path of an output of an earlier step.")
        artifact_class = _ARTIFACT_CLASSES.get(inputs[name].type.split("@")[0], dsl.Artifact)
        imports[name] = (os.path.abspath(path), artifact_class, metadata)

    @dsl.pipeline(name=f"tlp-component-{step_name}")
    def single_step():
        arguments = {"options": options}
        for name, (uri, artifact_class, metadata) in imports.items():
            arguments[name] = dsl.importer(
                artifact_uri=uri, artifact_class=artifact_class, metadata=metadata
            ).output
        component(**arguments)

    return single_step


def step_options(step_name: str, params: dict[str, str], output_dir: str) -> tuple[dict, list[str]]:
    """``--param NAME=VALUE`` -> the options the step reads, checked by their declarations, with
    ``auto`` and the default registry resolved as for a whole run."""
    settings = Settings.from_values(step_values(step_name, params, strict=True))
    settings, notes = resolve_local(settings, output_dir)
    return step_values(step_name, Settings.from_values(settings.values()).values()), notes


def run_component(
    name: str, artifacts: dict[str, str], params: dict[str, str], output_dir: str, verbose: bool = False
) -> dict:
    """Runs component ``name`` locally; returns its task directory, parameters and artifacts.
    ``verbose``: stream its full output (it is in the run's ``logs/`` folder either way)."""
    from kfp import local

    options, notes = step_options(name, params, output_dir)
    for note in notes:
        print(f"tlp component: {note}", flush=True)
    pipeline = build_single_pipeline(name, artifacts, options)
    root = os.path.join(os.path.abspath(output_dir), "components")
    os.makedirs(root, exist_ok=True)
    environment.quiet_tensorflow()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root)
    before = set(os.listdir(root))
    prefix = f"tlp-component-{name}"
    with routed_output(lambda: new_run_dir(root, before, prefix=prefix), verbose=verbose):
        pipeline()
    run_dir = new_run_dir(root, before, prefix=prefix)
    if run_dir is None:
        raise ServiceError(f"kfp's local runner wrote no run folder under {root}; check that the folder is writable.")
    task = COMPONENTS[name].name.replace("_", "-")
    outputs = task_outputs(run_dir, task) or {"parameters": {}, "artifacts": {}}
    return {"task_dir": os.path.join(run_dir, task), **outputs}
