"""The serving drift monitor on feature arrays: the gauge rises under drifted traffic, off the
calling thread."""

import time
from contextlib import closing

import numpy as np

from tlp.components.lib.drift_monitor import GAUGE, DriftMonitor


def _wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def _watch(rng, shape, **settings):
    """A monitor (no gauge) on a reference of normal features of ``shape``, closed after the with."""
    return closing(DriftMonitor(rng.normal(size=shape).astype(np.float32), gauge=False, **settings))


def test_gauge_rises_under_traffic_from_another_camera():
    from prometheus_client import REGISTRY

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(400, 32)).astype(np.float32)
    with closing(DriftMonitor(reference, capacity=100, every=50)) as monitor:
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


def test_a_photo_sent_again_counts_once():
    """Repeats (retries, probes, a popular photo) would sit in both the fitting and the held-out
    folds, where the classifier remembers them: 40 photos of the training kind sent 12 times each
    must read as 40 photos of the training kind, not as drift."""
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(400, 32)).astype(np.float32)
    photos = rng.normal(size=(40, 32)).astype(np.float32)
    with closing(DriftMonitor(reference, capacity=480, every=480, gauge=False)) as monitor:
        for _ in range(12):
            monitor.observe(photos)
        assert _wait_for(lambda: monitor.computed >= 1)
        state = monitor.snapshot()
        assert (state["recent"], state["distinct"]) == (480, 40)
        assert state["auc"] < 0.65, state


def test_too_few_distinct_photos_wait_without_failing_the_watch():
    rng = np.random.default_rng(5)
    with _watch(rng, (400, 32), capacity=100, every=50) as monitor:
        monitor.observe(np.repeat(rng.normal(size=(5, 32)), 10, axis=0))  # 5 photos, 10 times each
        assert _wait_for(lambda: monitor.snapshot()["note"] != "")
        state = monitor.snapshot()
        assert state["auc"] is None and state["error"] == "" and "only 5 distinct images" in state["note"]
        monitor.observe(rng.normal(size=(50, 32)))  # then enough different ones
        assert _wait_for(lambda: monitor.computed >= 1)
        assert monitor.snapshot()["note"] == "" and monitor.snapshot()["auc"] < 0.65


def test_observe_does_not_wait_for_a_recomputation():
    rng = np.random.default_rng(1)
    with _watch(rng, (1000, 256), capacity=500, every=10) as monitor:
        started = time.monotonic()
        for _ in range(50):
            monitor.observe(rng.normal(size=(10, 256)))
        assert time.monotonic() - started < 0.5  # recomputations take a worker process; observing microseconds


def test_the_window_is_at_most_what_the_test_scores():
    from tlp.components.lib import drift
    from tlp.components.lib.options import options_of
    from tlp.components.lib.settings import ServeOptions

    [window] = [opt for opt in options_of(ServeOptions) if opt.name == "drift_window"]
    assert window.spec.maximum == drift.MAX_NEW


def _worker_pid(monitor):
    process = monitor._worker._process
    return process.pid if process is not None else None


def test_close_leaves_no_worker_and_a_dead_worker_is_replaced():
    rng = np.random.default_rng(2)
    with _watch(rng, (200, 16), capacity=50, every=50) as monitor:
        monitor.observe(rng.normal(size=(50, 16)))
        assert _wait_for(lambda: monitor.computed >= 1)
        first = monitor._worker._process
        first.kill()  # the worker dies between recomputations (OOM killer, say)
        first.wait()
        monitor.observe(rng.normal(size=(50, 16)))
        assert _wait_for(lambda: monitor.computed >= 2 or monitor.error)
        # The recomputation that met the dead worker fails in one sentence; the next starts a new one.
        if monitor.computed < 2:
            assert "drift worker process" in monitor.error
            monitor.observe(rng.normal(size=(50, 16)))
            assert _wait_for(lambda: monitor.computed >= 2)
        assert _worker_pid(monitor) not in (None, first.pid)
        second = monitor._worker._process
    assert second.poll() is not None  # ended by close, not left behind
    monitor.observe(rng.normal(size=(50, 16)))
    time.sleep(0.3)
    assert monitor._worker._process is None and monitor.computed == 2  # nothing starts after close


def test_a_worker_that_cannot_start_stops_the_watch_after_a_few_tries(monkeypatch):
    import sys

    from tlp.components.lib import drift_monitor

    monkeypatch.setattr(drift_monitor.sys, "executable", sys.executable + "-missing")
    with closing(DriftMonitor(np.ones((20, 8), dtype=np.float32), capacity=10, every=10, gauge=False)) as monitor:
        for _ in range(drift_monitor.MAX_FAILURES + 1):
            monitor.observe(np.random.default_rng(0).normal(size=(10, 8)))
            time.sleep(0.2)
        assert _wait_for(lambda: "Stopped after" in monitor.error)
        assert "could not start" in monitor.error and monitor.computed == 0


def test_the_worker_computes_only_while_the_server_answers_no_request():
    rng = np.random.default_rng(3)
    with _watch(rng, (200, 16), capacity=50, every=50) as monitor:
        # A first recomputation starts the worker: its start-up (seconds on a loaded machine) is not waiting.
        monitor.observe(rng.normal(size=(50, 16)))
        assert _wait_for(lambda: monitor.computed == 1)
        monitor.requests.enter()  # a request is being answered, and stays so for a second
        monitor.observe(rng.normal(size=(50, 16)))
        assert _wait_for(lambda: monitor.busy)
        time.sleep(1.0)
        assert monitor.computed == 1  # the worker waits, it does not compute beside the request
        monitor.requests.leave()
        assert _wait_for(lambda: monitor.computed == 2)
        assert monitor.waited >= 0.5 and monitor.snapshot()["waited"] == monitor.waited


def test_an_unexpected_error_is_shown_and_the_watch_recovers(monkeypatch):
    """Not only a ServiceError: any failure of a recomputation is on /drift (and the page), the gauge
    loses its number, and the next recomputation runs; the thread does not die silently."""
    rng = np.random.default_rng(6)
    with _watch(rng, (200, 16), capacity=50, every=50) as monitor:
        monitor.observe(rng.normal(size=(50, 16)))
        assert _wait_for(lambda: monitor.computed >= 1)
        real_test = monitor._worker.test
        monkeypatch.setattr(monitor._worker, "test", lambda *args: 1 / 0)
        monitor.observe(rng.normal(size=(50, 16)))
        assert _wait_for(lambda: monitor.error != "")
        state = monitor.snapshot()
        assert "ZeroDivisionError" in state["error"] and state["auc"] is None and not state["stopped"], state
        monkeypatch.setattr(monitor._worker, "test", real_test)
        monitor.observe(rng.normal(size=(50, 16)))
        assert _wait_for(lambda: monitor.computed >= 2)
        assert monitor.snapshot()["error"] == "" and monitor.snapshot()["auc"] is not None


def test_unexpected_errors_in_a_row_stop_the_watch_and_say_so(monkeypatch):
    from tlp.components.lib import drift_monitor

    rng = np.random.default_rng(7)
    with _watch(rng, (200, 16), capacity=20, every=20) as monitor:
        monkeypatch.setattr(monitor._worker, "test", lambda *args: {}["missing"])
        for _ in range(drift_monitor.MAX_FAILURES):
            monitor.observe(rng.normal(size=(20, 16)))
            time.sleep(0.3)
        assert _wait_for(lambda: monitor.snapshot()["stopped"])
        state = monitor.snapshot()
        assert "KeyError" in state["error"] and "Stopped after 3 failures" in state["error"], state


def test_too_few_distinct_photos_clear_the_previous_windows_auc():
    """The gauge never shows a number measured on a window that is gone."""
    from prometheus_client import CollectorRegistry, Gauge

    gauge = Gauge("drift_test_gauge", "test", registry=CollectorRegistry())
    rng = np.random.default_rng(8)
    with closing(DriftMonitor(rng.normal(size=(200, 16)).astype(np.float32), capacity=50, every=50,
                              gauge=gauge)) as monitor:
        monitor.observe(rng.normal(size=(50, 16)))
        assert _wait_for(lambda: monitor.computed >= 1)
        assert not np.isnan(gauge._value.get())
        monitor.observe(np.repeat(rng.normal(size=(2, 16)), 25, axis=0))  # the window: 2 photos, 25 times each
        assert _wait_for(lambda: monitor.snapshot()["note"] != "")
        assert monitor.snapshot()["auc"] is None and np.isnan(gauge._value.get())


def test_a_photo_sent_again_counts_once_by_its_content_id_however_its_rows_differ():
    """The model gives one image slightly different features alone and inside a batch: 40 photos
    of the training kind sent 12 times, their rows differing in the 7th digit, are 40 photos."""
    rng = np.random.default_rng(9)
    reference = rng.normal(size=(400, 32)).astype(np.float32)
    photos = rng.normal(size=(40, 32)).astype(np.float32)
    with closing(DriftMonitor(reference, capacity=480, every=480, gauge=False)) as monitor:
        for _ in range(12):
            noisy = photos * (1 + 1e-7 * rng.standard_normal(photos.shape)).astype(np.float32)
            monitor.observe(noisy, [f"photo-{i}" for i in range(40)])
        assert _wait_for(lambda: monitor.computed >= 1)
        state = monitor.snapshot()
        assert (state["recent"], state["distinct"]) == (480, 40)
        assert state["auc"] < 0.65, state


def test_images_the_window_will_not_hold_are_not_asked_for_but_counted():
    """With ``every`` above ``capacity`` the ring buffer overwrites the earlier images before the
    recomputation: the server need not prepare them (a second model pass), yet they count."""
    rng = np.random.default_rng(10)
    with _watch(rng, (200, 16), capacity=50, every=200) as monitor:
        assert monitor.wanted(100) == 0
        monitor.observe(np.zeros((0, 16)), [], skipped=100)
        assert monitor.wanted(100) == 50  # the last 50 of the next 100 are the window
        monitor.observe(rng.normal(size=(50, 16)), [f"p{i}" for i in range(50)], skipped=50)
        assert _wait_for(lambda: monitor.computed >= 1)
        assert monitor.snapshot()["distinct"] == 50 and monitor.wanted(10) == 0


def test_watched_images_wait_in_a_bounded_queue_that_never_blocks_a_request(monkeypatch):
    """The request path only queues the images' bytes for the worker (which computes their features);
    while it is busy, images beyond ``max_pending`` are dropped and counted, never waited for."""
    import threading

    rng = np.random.default_rng(11)
    computing, release, batches = threading.Event(), threading.Event(), []

    def features(images):  # the worker's part, held until released
        batches.append(list(images))
        computing.set()
        release.wait(30)
        return rng.normal(size=(len(images), 16)).astype(np.float32), [data.decode() for data in images], 0

    with _watch(rng, (200, 16), capacity=50, every=1000, max_pending=4) as monitor:
        monkeypatch.setattr(monitor._worker, "features", features)
        monitor.watch([b"first"])
        assert computing.wait(10)  # the worker holds the first image
        started = time.monotonic()
        monitor.watch([f"image-{i}".encode() for i in range(10)])
        assert time.monotonic() - started < 0.1  # queued, not waited for
        state = monitor.snapshot()
        assert (state["pending"], state["dropped"]) == (4, 6), state
        release.set()
        assert _wait_for(lambda: monitor.snapshot()["recent"] == 5)
        assert batches == [[b"first"], [f"image-{i}".encode() for i in range(4)]]
        assert monitor._photos[:5] == ["first", "image-0", "image-1", "image-2", "image-3"]
        assert monitor.snapshot()["pending"] == 0 and monitor._since == 11  # every answered image counts
