import json
import subprocess
import sys

import pytest

from tlp.components.lib import strategy
from tlp.components.lib.specs import ConfigError

CLUSTER = {"worker": ["localhost:1", "localhost:2"]}


def test_cluster_size_and_chief():
    assert strategy.cluster_workers(None) == 0
    assert strategy.cluster_workers(json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": 1}})) == 2
    assert strategy.is_chief(None)
    assert strategy.is_chief(json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": 0}}))
    assert not strategy.is_chief(json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": 1}}))
    with_chief = {"chief": ["h:0"], "worker": ["h:1"]}
    assert strategy.is_chief(json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}}))
    assert not strategy.is_chief(json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))


def test_default_strategy_without_gpus_or_cluster():
    assert strategy.make_strategy("auto", tf_config="").num_replicas_in_sync == 1


def test_gpu_request_without_gpus_is_a_clear_error():
    with pytest.raises(ConfigError, match="asks for GPUs but TensorFlow sees none"):
        strategy.make_strategy("gpu", tf_config="")


@pytest.mark.slow  # its own processes load TensorFlow or Beam: make test runs it, make test-fast does not
def test_logical_cpus_give_mirrored_strategy_in_a_fresh_process():
    code = (
        "from tlp.components.lib.strategy import make_strategy\n"
        "s = make_strategy('cpu:3', tf_config='')\n"
        "print(type(s).__name__, s.num_replicas_in_sync)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "MirroredStrategy 3"


@pytest.mark.slow  # trains end to end: make test runs it, make test-fast does not
def test_one_cpu_device_fine_tunes_with_preemption_checkpoints(sample_dataset, head_model, tmp_path):
    # --devices cpu:1 once gave OneDeviceStrategy, which BackupAndRestore refuses (NotImplementedError).
    from tests.conftest import settings
    from tlp.components.lib.training import fine_tune

    history, replicas = fine_tune(sample_dataset, head_model[0], str(tmp_path / "model"),
                                  settings(fine_tune_at=100, fine_tune_epochs=1, batch_size=16, devices="cpu:1"),
                                  backup_dir=str(tmp_path / "backup"))
    assert replicas == 1 and len(history["loss"]) == 1
