"""One factory for the tf.distribute strategy, so the same training code runs on a laptop,
on a multi-GPU node and across machines.

Order of preference:
1. ``TF_CONFIG`` names more than one worker (Vertex AI sets it on multi-replica custom jobs)
   -> MultiWorkerMirroredStrategy.
2. ``--devices cpu:N`` -> MirroredStrategy over N logical CPU devices (how tests and laptops
   exercise the multi-replica code path; ``cpu:1`` pins training to the CPU).
3. More than zero GPUs and ``--devices`` auto/gpu[:N] -> MirroredStrategy over the GPUs.
4. Otherwise the default (single-device) strategy.
"""

from __future__ import annotations

import json
import os

from tlp.components.lib.specs import ConfigError, parse_devices


def cluster_workers(tf_config: str | None) -> int:
    """Number of machines named in a TF_CONFIG cluster (chief + workers)."""
    if not tf_config:
        return 0
    cluster = json.loads(tf_config).get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def cluster_spec() -> str | None:
    """The cluster this process belongs to: Vertex AI (and any TF cluster) says so in TF_CONFIG,
    which is read here and nowhere else."""
    return os.environ.get("TF_CONFIG")


def is_chief(tf_config: str | None = None) -> bool:
    """Whether this process writes the final outputs in a multi-worker cluster."""
    tf_config = cluster_spec() if tf_config is None else tf_config
    if not tf_config:
        return True
    config = json.loads(tf_config)
    cluster, task = config.get("cluster", {}), config.get("task", {})
    if task.get("type") == "chief":
        return True
    return "chief" not in cluster and task.get("type") == "worker" and task.get("index", 0) == 0


def make_strategy(devices: str = "auto", tf_config: str | None = None):
    """Returns the tf.distribute strategy for ``devices`` (see the module docstring)."""
    import tensorflow as tf

    kind, count = parse_devices(devices)
    if tf_config is None:
        tf_config = cluster_spec()
    if tf_config and cluster_workers(tf_config) > 1:
        # MultiWorkerMirroredStrategy reads TF_CONFIG from the environment itself.
        os.environ["TF_CONFIG"] = tf_config
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "cpu":
        if count <= 1:
            # Not OneDeviceStrategy: Keras' BackupAndRestore, which every training step uses, refuses it.
            return tf.distribute.MirroredStrategy(["/cpu:0"])
        _ensure_logical_cpus(count)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(count)])
    gpus = tf.config.list_physical_devices("GPU")
    if kind == "gpu" and not gpus:
        raise ConfigError(
            f"--devices {devices} asks for GPUs but TensorFlow sees none; check the driver "
            "(nvidia-smi) and the GPU image, or use --devices auto."
        )
    if gpus:
        if count > len(gpus):
            raise ConfigError(
                f"--devices {devices} asks for {count} GPUs but only {len(gpus)} are visible; "
                f"use gpu:{len(gpus)} or fewer."
            )
        names = [f"/gpu:{i}" for i in range(count or len(gpus))]
        return tf.distribute.MirroredStrategy(names)
    return tf.distribute.get_strategy()


def _ensure_logical_cpus(count: int) -> None:
    """Splits the physical CPU into ``count`` logical devices (before TF initialises them)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:  # devices already initialised in this process
        existing = len(tf.config.list_logical_devices("CPU"))
        if existing < count:
            raise ConfigError(
                f"--devices cpu:{count} needs {count} logical CPU devices but TensorFlow already "
                f"started with {existing} in this process; run the step in a fresh process."
            ) from error
