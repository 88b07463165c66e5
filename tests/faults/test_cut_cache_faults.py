"""Preemption during fine-tuning from the cut: a process killed while it builds its cache, or
after an epoch, is restarted; the cache is built again from scratch (never half-read), the
killed process's spill files are removed, and training resumes after the last finished epoch."""

import json
import os
import signal
import subprocess

import pytest

from tests.faults.test_cut_cache_distributed import ROOT, WORKER, _line
from tlp.components.lib import cut_cache


def _spill_dirs(tmp) -> list[str]:
    return sorted(name for name in os.listdir(tmp) if name.startswith(cut_cache.SPILL_PREFIX))


def _run_until(options, env, marker):
    """Starts the worker and kills it (SIGKILL, as a preempted machine) once it prints ``marker``."""
    process = subprocess.Popen([*WORKER, json.dumps(options)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=ROOT, env=env)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(marker):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen[-20:])
    return process.pid


@pytest.mark.slow
def test_killed_while_caching_or_training_resumes_with_a_rebuilt_cache(sharded, tmp_path):
    dataset, head = sharded
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}  # where the spill files go
    options = {"dataset": dataset, "model_in": head, "model_out": str(tmp_path / "model"),
               "backup": str(tmp_path / "backup"), "epochs": 3, "batch": 16, "devices": "auto", "cut_cache": True,
               "budget_bytes": 0}  # everything spilled to disk

    first = _run_until(options, env, "  cut cache: below layer")  # killed while it builds the cache
    assert [name.split("-")[3] for name in _spill_dirs(tmp)] == [str(first)]  # left behind by the kill

    second = _run_until(options, env, "Epoch 3/4")  # killed after epoch 2 finished (and was checkpointed)
    assert [name.split("-")[3] for name in _spill_dirs(tmp)] == [str(second)]  # the first one's were removed

    restarted = subprocess.run([*WORKER, json.dumps(options)], capture_output=True, text=True, cwd=ROOT, env=env,
                               timeout=600)
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-2000:]
    assert "cut cache: built" in restarted.stdout and "train 64 images (0 in memory, 64 spilled" in restarted.stdout
    assert [line.split()[1] for line in restarted.stdout.splitlines() if line.startswith("Epoch ")] == ["3/4", "4/4"]
    assert _line(restarted.stdout, "HISTORY")["epoch"] == [2, 3, 4]  # the epoch before the kill is kept
    assert _spill_dirs(tmp) == []  # the second kill's files removed, its own deleted after training
    assert not os.path.exists(tmp_path / "backup")
