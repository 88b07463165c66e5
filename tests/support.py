"""Helpers more than one test file uses: the installed ``tlp`` console script, a free loopback
port, stopping a child process, comparing model weights."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys


def tlp_script() -> str:
    """The installed ``tlp`` console script of this venv (what a user runs), not ``python -m``."""
    found = shutil.which("tlp", path=os.path.dirname(sys.executable))
    assert found, f"no tlp console script beside {sys.executable}; run make install"
    return found


def run_tlp(*args: str, cwd=None, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs ``tlp ARGS...`` through the console script; returns the finished process (text)."""
    return subprocess.run([tlp_script(), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """Terminates ``process``; kills it if it has not ended after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def weights(model_dir: str) -> list:
    """Every weight of a saved Keras model, as NumPy arrays."""
    from tlp.components.lib import model as model_lib

    return [w.numpy() for w in model_lib.load_keras(model_dir).weights]


def max_difference(a: list, b: list) -> float:
    import numpy as np

    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


# Two trainings that compute the same thing by different routes (cached activations vs images,
# 2 replicas vs 1) agree to float32 rounding, not bit for bit: oneDNN picks its kernels by CPU
# (an AMD EPYC rounds a loss differently in the 8th digit from the machines these were written on).
LOSS_RELATIVE_TOLERANCE = 1e-5


def assert_same_history(got: dict, expected: dict) -> None:
    """The same epochs and accuracies (counts of right answers) exactly, the same losses to
    float32 rounding."""
    import pytest

    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for key, values in expected.items():
        if "loss" in key:
            assert got[key] == pytest.approx(values, rel=LOSS_RELATIVE_TOLERANCE), key
        else:
            assert got[key] == values, key
