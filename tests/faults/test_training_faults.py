"""Faults during training: preemption (SIGKILL and restart), a diverging loss, and the
equivalence of distributed and single-device fine-tuning."""

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import settings
from tests.support import free_port, max_difference, weights
from tlp.components.lib import model as model_lib
from tlp.components.lib.training import TrainingDivergedError, train_head

WORKER = [sys.executable, "-m", "tests.faults.fine_tune_worker"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _history(stdout: str) -> dict:
    line = [x for x in stdout.splitlines() if x.startswith("HISTORY ")][-1]
    return json.loads(line[len("HISTORY "):])


@pytest.mark.slow
def test_killed_fine_tuning_resumes_from_last_finished_epoch(even, tmp_path):
    dataset, head = even
    backup, out = str(tmp_path / "backup"), str(tmp_path / "model")
    args = [dataset, head, out, backup, "4", "16", "auto"]
    process = subprocess.Popen([*WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=ROOT)
    seen = []
    for line in process.stdout:  # epoch lines: "Epoch 3/5" (phase 1 ran 1 epoch)
        seen.append(line)
        if line.startswith("Epoch 4/5"):  # epochs 2 and 3 are finished and checkpointed
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen[-20:])
    assert not os.path.exists(os.path.join(out, "saved_model.pb"))

    restarted = subprocess.run([*WORKER, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert restarted.returncode == 0, restarted.stdout[-2000:] + restarted.stderr[-2000:]
    epochs_run = [line.split()[1] for line in restarted.stdout.splitlines() if line.startswith("Epoch ")]
    assert epochs_run == ["4/5", "5/5"]  # resumed, not started over
    history = _history(restarted.stdout)
    assert history["epoch"] == [2, 3, 4, 5]  # the epochs before the kill are kept
    assert os.path.isfile(os.path.join(out, "saved_model.pb"))
    assert not os.path.exists(backup)  # cleaned once the model was saved
    serve = model_lib.load_servable(out)
    import tensorflow as tf

    from tlp.components.lib.dataprep import records

    batch, _ = next(iter(records.read_split(dataset, "test", 2)))
    result = serve(image_bytes=tf.constant([tf.io.encode_jpeg(i).numpy() for i in batch]))
    assert result["probabilities"].shape == (2, 2)


def test_diverging_loss_stops_with_a_clear_error(sample_dataset, tmp_path):
    with pytest.raises(TrainingDivergedError, match="training loss became (nan|inf)"):
        train_head(sample_dataset, str(tmp_path / "model"),
                   settings(check=False, alpha=0.35, weights="none", epochs=3, batch_size=16, learning_rate=1e38))
    assert not os.path.exists(tmp_path / "model")  # nothing saved, so nothing can be registered




# Measured: 1 vs 2 replicas differ by ~1.5e-8 (float summation order) while 4 steps move weights ~1e-4.
TOLERANCE = 1e-6


@pytest.mark.slow
def test_mirrored_on_two_cpus_equals_one_device(even, tmp_path):
    dataset, head = even  # 64 training images: 4 full batches of 16
    runs = {}
    for name, batch, devices in (("one", "16", "cpu:1"), ("two", "8", "cpu:2")):  # global batch 16 both
        out = str(tmp_path / name)
        result = subprocess.run([*WORKER, dataset, head, out, "", "1", batch, devices],
                                capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert f"REPLICAS {2 if name == 'two' else 1}" in result.stdout
        runs[name] = weights(out)
    before = weights(head)
    assert max_difference(before, runs["one"]) > 50 * TOLERANCE  # training did move the weights
    assert max_difference(runs["one"], runs["two"]) < TOLERANCE



@pytest.mark.slow
def test_two_multi_worker_processes_equal_one_device(even, tmp_path):
    dataset, head = even
    # The TF_CONFIG layout Vertex AI gives a 2-replica custom job: worker pool 0 is the chief,
    # worker pool 1 the workers. Every worker gets the same backup directory, as the component
    # gives them on Vertex AI (beside the model on the shared bucket).
    cluster = {"chief": [f"127.0.0.1:{free_port()}"], "worker": [f"127.0.0.1:{free_port()}"]}
    backup = str(tmp_path / "backup")
    workers = []
    for task in ({"type": "chief", "index": 0}, {"type": "worker", "index": 0}):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
        index = len(workers)
        out = str(tmp_path / f"worker{index}")
        workers.append((out, subprocess.Popen(
            [*WORKER, dataset, head, out, backup, "1", "8", "auto"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)))
    for _out, process in workers:
        stdout = process.communicate(timeout=900)[0]
        assert process.returncode == 0, stdout[-3000:]
        assert "REPLICAS 2" in stdout
    chief = weights(workers[0][0])
    assert not os.path.exists(workers[1][0])  # only the chief writes the model
    assert not os.path.exists(backup)  # removed by the chief once the model was saved
    single = str(tmp_path / "single")
    result = subprocess.run([*WORKER, dataset, head, single, str(tmp_path / "backup-single"), "1", "16", "cpu:1"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:]
    assert max_difference(chief, weights(single)) < TOLERANCE


@pytest.mark.slow
def test_preempted_multi_worker_job_resumes_on_every_worker_at_the_same_epoch(even, tmp_path):
    """A 2-replica Vertex AI job on spot VMs is preempted: both workers die and restart with the
    same backup directory. Both must resume after the last epoch the chief checkpointed."""
    dataset, head = even
    backup = str(tmp_path / "backup")

    def start(outs):
        cluster = {"chief": [f"127.0.0.1:{free_port()}"], "worker": [f"127.0.0.1:{free_port()}"]}
        return [subprocess.Popen([*WORKER, dataset, head, out, backup, "4", "8", "auto"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                 env={**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": task})})
                for out, task in zip(outs, ({"type": "chief", "index": 0}, {"type": "worker", "index": 0}),
                                     strict=True)]

    outs = [str(tmp_path / "chief"), str(tmp_path / "worker")]
    first = start(outs)
    seen = []
    for line in first[0].stdout:  # the chief's epoch lines: "Epoch 3/5" (phase 1 ran 1 epoch)
        seen.append(line)
        if line.startswith("Epoch 4/5"):  # epochs 2 and 3 are finished and checkpointed
            break
    for process in first:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert "".join(seen).count("Epoch ") == 3, "".join(seen[-20:])

    outputs = [process.communicate(timeout=900)[0] for process in start(outs)]
    for stdout in outputs:
        assert "REPLICAS 2" in stdout, stdout[-3000:]
        assert [line.split()[1] for line in stdout.splitlines() if line.startswith("Epoch ")] == ["4/5", "5/5"]
    assert _history(outputs[0])["epoch"] == [2, 3, 4, 5]  # the chief's history keeps the epochs before
    assert os.path.isfile(os.path.join(outs[0], "saved_model.pb"))
    assert not os.path.exists(backup)
