"""The serving drift monitor on feature arrays: the gauge rises under drifted traffic, off the
calling thread."""

import time

import numpy as np

from tlp.components.lib.drift_monitor import GAUGE, DriftMonitor


def _wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_gauge_rises_under_traffic_from_another_camera():
    from prometheus_client import REGISTRY

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(400, 32)).astype(np.float32)
    monitor = DriftMonitor(reference, capacity=100, every=50)
    try:
        for _ in range(4):
            monitor.observe(rng.normal(size=(25, 32)))  # like the training photos
        assert _wait_for(lambda: monitor.computed >= 1)
        calm = REGISTRY.get_sample_value(GAUGE)
        assert calm is not None and calm < 0.65
        done = monitor.computed
        for _ in range(4):
            monitor.observe(rng.normal(size=(25, 32)) + 0.8)  # drifted traffic fills the reservoir
        assert _wait_for(lambda: monitor.computed > done)
        # The recomputation may have started with the reservoir half drifted: one more after it is full.
        done = monitor.computed
        monitor.observe(rng.normal(size=(50, 32)) + 0.8)
        assert _wait_for(lambda: monitor.computed > done)
        assert (REGISTRY.get_sample_value(GAUGE) or 0) >= 0.8
        assert monitor.snapshot()["recent"] == 100
    finally:
        monitor.close()


def test_observe_does_not_wait_for_a_recomputation():
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(rng.normal(size=(1000, 256)).astype(np.float32), capacity=500, every=10, gauge=False)
    try:
        started = time.monotonic()
        for _ in range(50):
            monitor.observe(rng.normal(size=(10, 256)))
        assert time.monotonic() - started < 0.5  # recomputations take seconds; observing takes microseconds
        assert monitor.auc is None or 0.0 <= monitor.auc <= 1.0
    finally:
        monitor.close()
