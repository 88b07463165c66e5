"""Running the pipeline's steps in their container images (kfp's DockerRunner): the checks
that must pass before the first container starts, and the runner itself."""

from __future__ import annotations

import os

from tlp.components.lib import specs

RUNNERS = ("subprocess", "docker")


def check_docker_config(config) -> None:
    """With --runner docker only the pipeline root is mounted into the containers."""
    pipeline_root = os.path.join(os.path.abspath(config.output_dir), "pipeline-root")
    data = specs.parse_data_spec(config.data)
    if data.kind == "folder" and not data.path.startswith("gs://"):
        if not os.path.abspath(data.path).startswith(pipeline_root + os.sep):
            raise specs.ConfigError(
                f"--runner docker cannot see --data folder:{data.path} (only {pipeline_root} is "
                "mounted into the containers); copy the photos under it or use the subprocess runner."
            )
    if config.weights not in ("imagenet", "none"):
        raise specs.ConfigError(
            f"--runner docker cannot see the weights file {config.weights}; use imagenet (baked "
            "into the training image) or none."
        )
    if config.registry.startswith("sqlite:///") and not config.registry[len("sqlite:///"):].startswith(pipeline_root):
        raise specs.ConfigError(
            f"--runner docker cannot reach the registry {config.registry}; use --registry "
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



def make_runner(config):
    """A kfp DockerRunner for ``config`` (a validated RunConfig), after every check passed."""
    from kfp import local

    check_docker_config(config)
    check_docker_engine()
    return local.DockerRunner()
