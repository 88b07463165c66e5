"""Running the pipeline's steps in their container images (kfp's DockerRunner): the checks
that must pass before the first container starts, and the runner itself."""

from __future__ import annotations

import os

from tlp.components.lib import specs
from tlp.components.lib.settings import LocalRunOptions, Settings


def check_docker_config(settings: Settings, local: LocalRunOptions) -> None:
    """With --runner docker only the pipeline root is mounted into the containers."""
    pipeline_root = os.path.join(os.path.abspath(local.output_dir), "pipeline-root")
    data = specs.parse_data_spec(settings.data.data)
    if data.kind == "folder" and not data.path.startswith("gs://"):
        if not os.path.abspath(data.path).startswith(pipeline_root + os.sep):
            raise specs.ConfigError(
                f"--runner docker cannot see --data folder:{data.path} (only {pipeline_root} is "
                "mounted into the containers); copy the photos under it or use the subprocess runner."
            )
    weights = settings.model.weights
    if weights not in ("imagenet", "none"):
        raise specs.ConfigError(
            f"--runner docker cannot see the weights file {weights}; use imagenet (baked "
            "into the training image) or none."
        )
    registry = settings.registry.registry
    if registry.startswith("sqlite:///") and not registry[len("sqlite:///"):].startswith(pipeline_root):
        raise specs.ConfigError(
            f"--runner docker cannot reach the registry {registry}; use --registry "
            f"sqlite:///{pipeline_root}/registry.db or an MLflow server URL."
        )


def check_docker_engine() -> None:
    import docker

    try:
        docker.from_env().ping()
    except docker.errors.DockerException as error:
        reason = str(error).split(":")[0]
        raise specs.ConfigError(
            f"--runner docker needs a running Docker engine ({reason}); start Docker, or use "
            "--runner subprocess (the default)."
        ) from error


def make_runner(settings: Settings, local: LocalRunOptions):
    """A kfp DockerRunner for the (resolved, checked) settings, after every check passed."""
    from kfp import local as kfp_local

    check_docker_config(settings, local)
    check_docker_engine()
    return kfp_local.DockerRunner()
