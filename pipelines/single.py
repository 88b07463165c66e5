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

from tlp.components.lib.specs import ConfigError
from tlp.pipelines import runners

_TYPES = {"Integer": int, "Float": float, "Boolean": lambda v: v.lower() in ("1", "true", "yes"), "String": str}
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


def build_single_pipeline(component, artifacts: dict[str, str], params: dict[str, str]):
    """A one-step pipeline: importers for the artifact inputs, then ``component``."""
    spec = component.component_spec
    inputs = spec.inputs or {}
    artifact_names = {n for n, s in inputs.items() if "." in s.type}
    unknown = (set(artifacts) | set(params)) - set(inputs)
    if unknown:
        raise ConfigError(
            f"{component.name} has no input(s) {sorted(unknown)}; its inputs are {sorted(inputs)}."
        )
    missing = sorted(n for n in artifact_names if n not in artifacts)
    if missing:
        raise ConfigError(
            f"{component.name} needs artifact input(s) {missing}; pass each as --input NAME=PATH."
        )
    wrong = sorted(n for n in params if n in artifact_names)
    if wrong:
        raise ConfigError(f"{wrong} are artifacts; pass them with --input, not --param.")
    values = {}
    for name, text in params.items():
        kind = inputs[name].type
        try:
            values[name] = _TYPES.get(kind, str)(text)
        except ValueError as error:
            raise ConfigError(f"--param {name}={text!r} is not a valid {kind}; fix the value.") from error
    imports = {}
    for name, path in artifacts.items():
        metadata = artifact_metadata(path)
        # Metrics artifacts are metadata only: kfp writes no file for them, only the record.
        if not os.path.exists(path) and not metadata:
            raise ConfigError(f"--input {name}={path} does not exist; give the path of an output of an earlier step.")
        artifact_class = _ARTIFACT_CLASSES.get(inputs[name].type.split("@")[0], dsl.Artifact)
        imports[name] = (os.path.abspath(path), artifact_class, metadata)

    @dsl.pipeline(name=f"tlp-component-{component.name.replace('_', '-')}")
    def single_step():
        arguments = dict(values)
        for name, (uri, artifact_class, metadata) in imports.items():
            arguments[name] = dsl.importer(
                artifact_uri=uri, artifact_class=artifact_class, metadata=metadata
            ).output
        component(**arguments)

    return single_step


def run_component(name: str, artifacts: dict[str, str], params: dict[str, str], output_dir: str) -> dict:
    """Runs component ``name`` locally; returns its task directory, parameters and artifacts."""
    from kfp import local

    from tlp.pipelines.cli import _components

    component = _components()[name]
    pipeline = build_single_pipeline(component, artifacts, params)
    pipeline_root = os.path.join(os.path.abspath(output_dir), "components")
    os.makedirs(pipeline_root, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root)
    before = set(os.listdir(pipeline_root))
    with runners.failures_explained(name):
        pipeline()
    run_dir = sorted(os.path.join(pipeline_root, n) for n in set(os.listdir(pipeline_root)) - before)[-1]
    task = component.name.replace("_", "-")
    outputs = runners.task_outputs(run_dir, task) or {"parameters": {}, "artifacts": {}}
    return {"task_dir": os.path.join(run_dir, task), **outputs}
