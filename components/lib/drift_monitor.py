"""Drift of the served traffic: a bounded reservoir of recent requests' pooled features, compared
with the model's reference every ``every`` images, in a background thread (never on the request
path). The last AUC is a Prometheus gauge (``tlp_image_drift_auc``) and a value for the page.

``tlp serve`` feeds it the features its model computes anyway (the SavedModel's
``serving_with_features`` signature: the same forward pass). The recomputation must not slow
the requests it watches, on a machine whose cores TensorFlow already uses: its thread runs at
the lowest CPU priority (nice 19) and its numpy on one BLAS thread, so it takes only the CPU time
that serving leaves idle."""

from __future__ import annotations

import logging
import os
import sys
import threading

import numpy as np
from threadpoolctl import threadpool_limits

from tlp.components.lib import drift

LOG = logging.getLogger(__name__)

GAUGE = "tlp_image_drift_auc"


class DriftMonitor:
    """``observe(features)`` after each model call (cheap: a copy into the reservoir and a counter);
    ``auc`` / the gauge hold the latest drift; ``close()`` at shutdown.

    The reservoir keeps the ``capacity`` most recent images (a ring buffer: drift is about the
    traffic now, not since start-up). Every ``every`` observed images, once ``drift.MIN_PHOTOS``
    are in, a background thread recomputes the test on at most ``max_reference`` reference rows;
    observations arriving meanwhile are only counted (a recompute never queues behind another)."""

    def __init__(self, reference: np.ndarray, *, capacity: int = 500, every: int = 200,
                 max_reference: int = 1000, seed: int = 0, gauge=None):
        self.reference = np.asarray(reference, dtype=np.float32)
        self.capacity, self.every, self.max_reference, self.seed = capacity, every, max_reference, seed
        self._buffer = np.zeros((capacity, self.reference.shape[1]), dtype=np.float32)
        self._filled = self._next = self._since = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self.auc: float | None = None
        self.computed = 0  # recomputations done
        self.busy = False  # a recomputation is running
        self.error = ""  # why the last recomputation failed, if it did
        self._gauge = gauge if gauge is not None else _gauge()
        if self._gauge:
            self._gauge.set(float("nan"))  # no value until the first recomputation (0 would read as an AUC)
        self._thread = threading.Thread(target=self._loop, name="tlp-drift-monitor", daemon=True)
        self._thread.start()

    def observe(self, features) -> None:
        rows = np.asarray(features, dtype=np.float32).reshape(-1, self._buffer.shape[1])[-self.capacity:]
        with self._lock:
            for row in rows:
                self._buffer[self._next] = row
                self._next = (self._next + 1) % self.capacity
            self._filled = min(self.capacity, self._filled + len(rows))
            self._since += len(rows)
            due = self._since >= self.every and self._filled >= drift.MIN_PHOTOS
        if due:
            self._wake.set()

    def recent(self) -> np.ndarray:
        with self._lock:
            return self._buffer[: self._filled].copy()

    def compute_now(self) -> float:
        """One recomputation on the calling thread (the background loop calls this)."""
        with self._lock:
            self._since = 0
            recent = self._buffer[: self._filled].copy()
        self.busy = True
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                result = drift.two_sample_test(self.reference, recent, seed=self.seed,
                                               max_reference=self.max_reference, max_new=self.capacity)
        finally:
            self.busy = False
        self.auc = result.auc
        self.computed += 1
        self.error = ""
        if self._gauge:
            self._gauge.set(result.auc)
        return result.auc

    def snapshot(self, threshold: float = drift.DEFAULT_THRESHOLD) -> dict:
        """For the page: the latest AUC (None before the first) and its verdict, how many recent
        images it saw, how often it is recomputed."""
        return {"auc": self.auc, "verdict": drift.short_verdict(self.auc, threshold) if self.auc is not None else "",
                "threshold": threshold, "recent": self._filled, "window": self.capacity, "every": self.every,
                "reference": len(self.reference), "computed": self.computed, "error": self.error}

    def close(self, timeout: float = 5.0) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        lowest_priority()
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            try:
                self.compute_now()
            except Exception as error:  # a failed recomputation must not end the watch, nor serving
                self.error = f"{type(error).__name__}: {error}"
                LOG.warning("image drift recomputation failed (%s); the next one runs after %d more images",
                            self.error, self.every)


def lowest_priority() -> None:
    """Nice 19 for the calling thread only (Linux schedules threads as tasks, so setpriority on
    the thread's id leaves the request threads alone); elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError as error:  # a sandbox may forbid it: the watch still works, at normal priority
            LOG.warning("could not lower the drift thread's priority (%s)", error)


def _gauge():
    """The process-wide gauge (prometheus_client, which KServe's /metrics serves); one per process."""
    from prometheus_client import REGISTRY, Gauge

    existing = REGISTRY._names_to_collectors.get(GAUGE)  # a second monitor in a process (tests) reuses it
    if existing is not None:
        return existing
    return Gauge(GAUGE, "cross-validated ROC AUC of recent request photos vs the model's training photos "
                 "(0.5: indistinguishable)")
