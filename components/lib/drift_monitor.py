"""Drift of the served traffic: a bounded reservoir of recent requests' pooled features, compared
with the model's reference every ``every`` images, off the request path. The last AUC is a
Prometheus gauge (``tlp_image_drift_auc``) and a value for the page.

``tlp serve`` hands it the raw bytes of the images the next window will hold (``watch``: a bounded
queue, never waited on: when it is full, images are dropped and counted); its worker process
prepares them as data prep stores a photo and computes their pooled features with the model's
``serving_with_features`` signature (loaded at the first batch, on one thread), so that the second
model pass runs off the request path. Measured (bench/serving.py): with that pass on the request
path the watch cost 1.8-2.5x per batch of 32. Unit tests and callers that have features already
``observe`` them. The recomputation must not slow the requests it watches, on a machine whose
cores TensorFlow already uses. So:

- it runs in a process of its own (``python -m tlp.components.lib.drift_monitor``: numpy and the
  test, TensorFlow only once it has images to compute features of; a thread would hold the server's
  GIL), on one BLAS thread, with Linux's
  SCHED_IDLE priority (only on a core nothing else wants);
- it computes only while the server answers no request: the server counts its requests in flight
  (``InFlight``, 8 bytes of a file both processes map) and the worker waits before each step of
  the fit while that count is above zero (at most ``MAX_WAIT_SECONDS`` per recomputation, so a
  server that is never idle still gets its gauge);
- it tests the features through a fixed random projection to ``DIMENSIONS`` dimensions
  (``drift.random_projection``): the same classifier test as ``tlp drift``, on a tenth of the
  width. Measured (bench/serving.py): the full test took 0.7-1.0 s per recomputation and raised
  p99 at 32 images by 30% even at the lowest priority (it streams megabytes through the caches and
  memory that TensorFlow uses); projected, by 4-11%; waiting for idle moments as well, 0.98x.

The process starts at the first recomputation, so the server's start-up does not wait for it."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import mmap
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from tlp.components.lib import drift
from tlp.components.lib import model as model_lib
from tlp.components.lib.dataprep.encode import prepare_bytes
from tlp.components.lib.specs import ConfigError, ServiceError

LOG = logging.getLogger(__name__)

GAUGE = "tlp_image_drift_auc"
DIMENSIONS = 128  # of the features' width (1,280 for MobileNetV2 at alpha 1.0)
MAX_FAILURES = 3  # recomputations failing in a row end the watch (a worker that cannot start, say)
MAX_WAIT_SECONDS = 60.0  # a recomputation waits at most this long, in all, for the server to be idle
MAX_PENDING = 512  # images waiting for the worker to compute their features; more are dropped (counted)
MAX_PENDING_BYTES = 64_000_000  # and at most this many bytes of them (a few large uploads fill it sooner)
FEATURE_BATCH = 32  # images the worker computes features of in one model call
WORKER_MODULE = "tlp.components.lib.drift_monitor"  # what the worker process runs (``work``)


class DriftMonitor:
    """``observe(features)`` after each model call (cheap: a copy into the reservoir and a counter);
    ``auc`` / the gauge hold the latest drift; ``close()`` at shutdown.

    The reservoir keeps the ``capacity`` most recent images (a ring buffer: drift is about the
    traffic now, not since start-up). Every ``every`` observed images, once ``drift.MIN_PHOTOS``
    are in, a background thread hands the reservoir to the worker process, which tests it against
    at most ``max_reference`` reference rows; observations arriving meanwhile are only counted (a
    recomputation never queues behind another)."""

    def __init__(self, reference: np.ndarray, *, capacity: int = 500, every: int = 200,
                 max_reference: int = 1000, seed: int = 0, gauge=None, reference_photos: list[str] | None = None,
                 model_dir: str = "", image_size: int = 0, max_pending: int = MAX_PENDING):
        self.reference = np.asarray(reference, dtype=np.float32)
        self.capacity, self.every, self.max_reference, self.seed = capacity, every, max_reference, seed
        self._buffer = np.zeros((capacity, self.reference.shape[1]), dtype=np.float32)
        self._photos: list[str] = [""] * capacity  # each row's content id (drift.content_id)
        self._filled = self._next = self._since = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self.requests = InFlight()  # the server counts its requests in flight here (serving.app)
        self._worker = DriftWorker(self.reference, max_reference=max_reference, max_new=capacity, seed=seed,
                                   requests_file=self.requests.path, reference_photos=reference_photos or [],
                                   model_dir=model_dir, image_size=image_size)
        # Raw images ``watch`` took, waiting for the worker to compute their features (bounded: the
        # request path never waits for the worker, and memory stays bounded).
        self._pending: collections.deque[bytes] = collections.deque()
        self.max_pending, self._pending_bytes = max_pending, 0
        self.dropped = 0  # watched images dropped because the queue was full (answered, not watched)
        self.auc: float | None = None
        self.computed = 0  # recomputations done
        self.distinct = 0  # different images in the window at the last recomputation (repeats count once)
        self.note = ""  # why the last due recomputation did not run (too few distinct images)
        self.busy = False  # a recomputation is running
        self.seconds = 0.0  # how long the last one took (wall, in the worker)
        self.waited = 0.0  # of which waiting for the server to answer no request
        self.error = ""  # why the last recomputation failed, if it did
        self.left_out = 0  # answered images the watch could not prepare as data prep would (not watched)
        self._failures = 0  # in a row
        self._gauge = gauge if gauge is not None else _gauge()
        if self._gauge:
            self._gauge.set(float("nan"))  # no value until the first recomputation (0 would read as an AUC)
        self._thread = threading.Thread(target=self._loop, name="tlp-drift-monitor", daemon=True)
        self._thread.start()

    def wanted(self, count: int) -> int:
        """How many of the next ``count`` images (the last ones) the next recomputation's window will
        hold: with ``every`` above ``capacity`` the ring buffer overwrites the earlier ones before it
        runs, so the server need not prepare them (``observe(..., skipped=)`` counts them)."""
        with self._lock:
            skippable = self.every - self.capacity - self._since
        return count - min(count, max(0, skippable))

    def watch(self, images: list[bytes], skipped: int = 0) -> None:
        """The request path's call (microseconds, never waits): the raw bytes of a batch's images that
        the next window will hold, queued for the worker to prepare and compute features of. When the
        queue is full the rest are dropped and counted (``dropped`` on /drift). ``skipped``: the
        batch's images before these that ``wanted`` said the window will not hold."""
        with self._lock:
            for data in images:
                if len(self._pending) < self.max_pending and self._pending_bytes + len(data) <= MAX_PENDING_BYTES:
                    self._pending.append(data)
                    self._pending_bytes += len(data)
                else:
                    self.dropped += 1
            self._since += len(images) + skipped  # served images count towards ``every`` when answered
        self._wake.set()

    def _compute_pending(self) -> None:
        """On the background thread: the worker computes features of the queued images, a batch at a
        time, into the window (images it cannot prepare are counted as ``left_out``)."""
        while True:
            with self._lock:
                batch = [self._pending.popleft() for _ in range(min(FEATURE_BATCH, len(self._pending)))]
                self._pending_bytes -= sum(map(len, batch))
            if not batch:
                return
            try:
                features, photos, left_out = self._worker.features(batch)
            except BaseException:
                self.dropped += len(batch)  # not watched: counted, and the failure is on /drift
                raise
            self._store(features, photos)
            self.left_out += left_out

    def _due(self) -> bool:
        with self._lock:
            return self._since >= self.every and self._filled >= drift.MIN_PHOTOS

    def observe(self, features, photos: list[str] | None = None, left_out: int = 0, skipped: int = 0) -> None:
        """``photos``: each row's content id (``drift.content_id`` of the prepared image), so that a
        photo sent again counts once however its features differ between batches; without them a
        row's own bytes are its identity (only bit-for-bit repeats count once). ``left_out``: images
        of the batch that could not be watched (counted, shown on /drift); ``skipped``: images before
        these that ``wanted`` said the window would not hold (they count towards ``every``)."""
        self.left_out += left_out
        rows = np.asarray(features, dtype=np.float32).reshape(-1, self._buffer.shape[1])
        if photos is None:
            photos = [hashlib.sha256(row.tobytes()).hexdigest() for row in rows]
        if len(photos) != len(rows):
            raise ConfigError(f"{len(photos)} content ids for {len(rows)} feature rows")
        self._store(rows, photos)
        with self._lock:
            self._since += len(rows) + left_out + skipped
        if self._due():
            self._wake.set()

    def _store(self, rows: np.ndarray, photos: list[str]) -> None:
        """Rows and their content ids into the ring buffer (not counted towards ``every``)."""
        rows, photos = rows[-self.capacity:], list(photos)[-self.capacity:]
        with self._lock:
            for row, photo in zip(rows, photos, strict=True):
                self._buffer[self._next] = row
                self._photos[self._next] = photo
                self._next = (self._next + 1) % self.capacity
            self._filled = min(self.capacity, self._filled + len(rows))

    def _recompute(self) -> float | None:
        """One recomputation, waited for on the background thread (the only caller)."""
        with self._lock:
            self._since = 0
            recent = self._buffer[: self._filled].copy()
            photos = self._photos[: self._filled]
        self.busy = True
        try:
            auc, self.distinct, self.seconds, self.waited = self._worker.test(recent, photos)
        finally:
            self.busy = False
        self._failures = 0  # the worker answered
        if auc is None:
            # The last AUC was measured on a window that is gone: neither the gauge nor /drift keeps it.
            self._forget_auc()
            self.error = ""
            self.note = (f"only {self.distinct} distinct images among the last {len(recent)}: at least "
                         f"{drift.MIN_PHOTOS} are needed; the AUC waits for more")
            return None
        self.auc = auc
        self.computed += 1
        self.error = self.note = ""
        if self._gauge:
            self._gauge.set(self.auc)
        return self.auc

    def _forget_auc(self) -> None:
        self.auc = None
        if self._gauge:
            self._gauge.set(float("nan"))  # no number rather than one that is no longer the traffic's

    def snapshot(self, threshold: float = drift.DEFAULT_THRESHOLD) -> dict:
        """For the page: the latest AUC (None before the first) and its verdict, how many recent
        images it saw, how often it is recomputed."""
        return {"auc": self.auc, "verdict": drift.short_verdict(self.auc, threshold) if self.auc is not None else "",
                "threshold": threshold, "recent": self._filled, "distinct": self.distinct, "window": self.capacity,
                "every": self.every,
                "reference": len(self.reference), "computed": self.computed, "busy": self.busy,
                "seconds": self.seconds, "waited": self.waited, "error": self.error, "note": self.note,
                "stopped": self.stopped, "left_out": self.left_out, "dropped": self.dropped,
                "pending": len(self._pending)}

    @property
    def stopped(self) -> bool:
        """The watch ended on its own (failures in a row, or its thread died), not by ``close``."""
        return not self._stop and not self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        """Ends the watch: the worker process is stopped (killed if a recomputation holds it past
        ``timeout``) and no recomputation starts or finishes afterwards."""
        self._stop = True
        self._wake.set()
        self._worker.close(timeout)
        self._thread.join(timeout)
        self.requests.close()

    def _loop(self) -> None:
        try:
            self._watch()
        except BaseException as error:  # not expected (_watch catches every Exception): still say it stopped
            self._forget_auc()
            self.error = (f"the drift watch stopped ({type(error).__name__}: {error}); restart the server to "
                          "watch drift again.")
            LOG.error("image drift watch stopped: %s", self.error)
            raise

    def _watch(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            try:
                self._compute_pending()
                if self._due():
                    self._recompute()
            except Exception as error:  # any failure is shown on /drift; the watch goes on, and so does serving
                self._failures += 1
                self._forget_auc()
                text = str(error) if isinstance(error, ServiceError) else (
                    f"the drift recomputation failed ({type(error).__name__}: {error}).")
                if self._failures >= MAX_FAILURES:
                    self.error = f"{text} Stopped after {self._failures} failures in a row; restart the server."
                    LOG.warning("image drift watch stopped: %s", self.error)
                    self._worker.close()
                    return
                self.error = text
                LOG.warning("image drift recomputation failed (%s); the next one runs after %d more images",
                            self.error, self.every, exc_info=not isinstance(error, ServiceError))


class DriftWorker:
    """The two-sample test in a process of its own (started at the first ``test``, started again
    if it died): the reference goes over once, then each ``test(recent)`` sends the recent features
    and waits for the answer (AUC, distinct images, seconds, of which waited). Arrays cross the
    pipe as a JSON line with their shape and then their float32 bytes (``send_array``), answers as
    JSON lines. Any failure to talk to it is a ``ServiceError`` and ends that process; once
    ``close``d, it starts no process again."""

    def __init__(self, reference: np.ndarray, *, max_reference: int, max_new: int, seed: int, requests_file: str,
                 reference_photos: list[str] | None = None, model_dir: str = "", image_size: int = 0):
        self.reference = reference
        self.reference_photos = reference_photos or []
        self.settings = {"max_reference": max_reference, "max_new": max_new, "seed": seed, "dimensions": DIMENSIONS,
                         "requests_file": requests_file, "model_dir": model_dir, "image_size": image_size}
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()  # one conversation at a time; close waits for it or cuts it
        self._closed = False

    def features(self, images: list[bytes]) -> tuple[np.ndarray, list[str], int]:
        """(pooled features, content ids, how many could not be prepared) of raw images, prepared in
        the worker as data prep stores a photo and run through the model's features signature."""

        def ask(stdin) -> None:
            send_line(stdin, {"images": [len(data) for data in images]})
            stdin.write(b"".join(images))
            stdin.flush()

        result, rows = self._converse(ask, "batch", with_rows=True)
        if "error" in result:
            raise ServiceError(f"the drift worker could not compute features of served images: {result['error']}")
        assert rows is not None
        return rows, list(result["photos"]), int(result["left_out"])

    def test(self, recent: np.ndarray, photos: list[str]) -> tuple[float | None, int, float, float]:
        """(AUC, distinct images tested, seconds, of which waiting for the server to be idle) of the
        rows ``recent`` with content ids ``photos``; the AUC is None when fewer than
        ``drift.MIN_PHOTOS`` of the images differ."""

        def ask(stdin) -> None:
            send_array(stdin, recent)
            send_line(stdin, photos)

        result, _ = self._converse(ask, "recomputation")
        if "error" in result:
            raise ServiceError(f"the drift test failed in its worker: {result['error']}")
        auc = None if result["auc"] is None else float(result["auc"])
        return auc, int(result["distinct"]), float(result["seconds"]), float(result["waited"])

    def _converse(self, ask, next_time: str, with_rows: bool = False) -> tuple[dict, np.ndarray | None]:
        """One exchange with the worker, one at a time: ``ask`` writes the request, then the answer
        line is read (and, when ``with_rows`` and the answer is no error, the rows after it). A broken
        pipe, a line that is no answer or a worker that ended is a ServiceError; the worker starts
        again at the next ``next_time`` ("batch", "recomputation")."""
        rows = None
        with self._lock:
            if self._closed:
                raise ServiceError("the drift watch was closed.")
            process = self._started()
            assert process.stdin is not None and process.stdout is not None
            try:
                ask(process.stdin)
                answer = process.stdout.readline()
                result = json.loads(answer) if answer else None
                if with_rows and result is not None and "error" not in result:
                    rows = receive_array(process.stdout)
            except (OSError, ValueError, ServiceError) as error:
                self._end(process)
                raise ServiceError(f"the drift worker process failed ({error}); it starts again at the next "
                                   f"{next_time}.") from error
            if result is None:
                self._end(process)
                raise ServiceError(f"the drift worker process ended (exit code {process.returncode}); it starts "
                                   f"again at the next {next_time}.")
        return result, rows

    def close(self, timeout: float = 5.0) -> None:
        """Stops the worker: it ends when its input closes; killed if a test holds it past ``timeout``."""
        self._closed = True
        if self._lock.acquire(timeout=timeout):
            try:
                if self._process is not None:
                    self._end(self._process)
            finally:
                self._lock.release()
        elif self._process is not None:  # a test is under way: cut it short (its caller gets a ServiceError)
            self._process.kill()

    def _end(self, process: subprocess.Popen) -> None:
        self._process = None
        if process.stdin:
            try:
                process.stdin.close()  # the worker's signal to end
            except OSError:  # already broken: it is ending anyway
                pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()

    def _started(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        if self._process is not None:
            self._end(self._process)
        # One BLAS thread, set before the worker imports numpy: the server's cores are TensorFlow's.
        # A session of its own: a Ctrl-C at the terminal is the server's to handle (it closes the pipe).
        environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            process = subprocess.Popen([sys.executable, "-m", WORKER_MODULE,
                                        json.dumps(self.settings)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment,
                                       start_new_session=True)
        except OSError as error:
            raise ServiceError(f"the drift worker process could not start ({error}).") from error
        lowest_priority(process.pid)  # from the start, not only once it has imported numpy
        self._process = process
        assert process.stdin is not None
        try:
            send_array(process.stdin, self.reference)
            send_line(process.stdin, self.reference_photos)
        except OSError as error:
            self._end(process)
            raise ServiceError(f"the drift worker process ended at start-up (exit code {process.returncode}; "
                               "its error is in the server's log).") from error
        return process


def work(settings: dict) -> None:
    """The worker's loop, on stdin and stdout: a reference, then recent features until the input
    ends; one JSON line per test. Runs at the lowest CPU priority."""
    source, answers = sys.stdin.buffer, sys.stdout
    lowest_priority(0)
    dimensions = settings.pop("dimensions")
    requests = InFlight(settings.pop("requests_file"))
    model = ServedFeatures(settings.pop("model_dir"), settings.pop("image_size"))
    reference = _next_array(source)
    reference_photos = _next_line(source)
    if reference is None or reference_photos is None:
        return
    basis = drift.random_projection(reference.shape[1], min(dimensions, reference.shape[1]), settings["seed"])
    reference = reference @ basis
    while True:
        header = source.readline()
        if not header:  # the server closed the pipe: done
            return
        message = json.loads(header)
        started, waited = time.monotonic(), 0.0

        def while_serving() -> None:  # before each step of the fit: wait while a request is answered
            nonlocal waited
            since = time.monotonic()  # the clock, not a count of sleeps: a busy machine oversleeps
            while requests.count() > 0 and waited + (time.monotonic() - since) < MAX_WAIT_SECONDS:
                time.sleep(0.001)
            waited += time.monotonic() - since

        if isinstance(message, dict):  # served images to compute features of
            images = [source.read(size) for size in message["images"]]
            if sum(map(len, images)) != sum(message["images"]):
                return  # cut off mid-batch: the server is gone
            while_serving()
            try:
                rows, ids, left_out = model.features(images)
            except Exception as error:  # any failure: the server says it on /drift, the watch goes on
                if not _answer(answers, {"error": f"{type(error).__name__}: {error}"}):
                    return
                continue
            if not _answer(answers, {"photos": ids, "left_out": left_out}):
                return
            send_array(answers.buffer, rows)
            continue
        size = 4 * int(np.prod(message))
        data = source.read(size)
        if len(data) != size:
            return  # cut off mid-array: the server is gone
        recent = np.frombuffer(data, dtype=np.float32).reshape(message)
        photos = _next_line(source)
        if photos is None:
            return

        # A photo sent again (a retry, a probe, a popular photo) is one photo, by its content id: the
        # test counts it once (drift.two_sample_test).
        distinct = len(set(photos))
        answer: dict[str, float | int | str | None] = {"auc": None, "distinct": distinct, "seconds": 0.0,
                                                       "waited": 0.0}
        try:
            if distinct >= drift.MIN_PHOTOS:
                result = drift.two_sample_test(reference, recent @ basis, between_steps=while_serving,
                                               reference_photos=reference_photos, new_photos=photos, **settings)
                answer.update(auc=result.auc, seconds=round(time.monotonic() - started, 3), waited=round(waited, 3))
        except (ConfigError, ValueError, FloatingPointError) as error:
            answer = {"error": str(error)}
        if not _answer(answers, answer):
            return


def _answer(answers, answer: dict) -> bool:
    """One JSON line to the server; False when it stopped listening."""
    try:
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    except BrokenPipeError:
        return False
    return True


class ServedFeatures:
    """In the worker: served images prepared as data prep stores a photo (``encode.prepare_bytes``),
    then the model's pooled features (its features signature, the one the reference was computed
    with). TensorFlow and the model load at the first batch, on one thread each for ops and between
    them: the worker runs beside the server, at the lowest priority."""

    def __init__(self, model_dir: str, image_size: int):
        self.model_dir, self.image_size = model_dir, image_size
        self._serve: Any = None  # the features signature, once loaded

    def features(self, images: list[bytes]) -> tuple[np.ndarray, list[str], int]:
        if not self.model_dir or not self.image_size:
            raise ConfigError("this drift watch was started without a model directory and image size, so it "
                              "cannot compute features of served images; pass model_dir and image_size.")
        prepared, left_out = [], 0
        for data in images:
            try:
                prepared.append(prepare_bytes(data, self.image_size))
            except Exception:  # any decoder failure: counted on /drift (left_out); TensorFlow answered it
                left_out += 1
        photos = [drift.content_id(data) for data in prepared]
        if not prepared:
            return np.zeros((0, 0), dtype=np.float32), [], left_out
        import tensorflow as tf

        if self._serve is None:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
            self._serve = model_lib.load_servable(self.model_dir, model_lib.FEATURES_SIGNATURE)
        outputs = self._serve(image_bytes=tf.constant(prepared))
        return outputs[model_lib.FEATURES_OUTPUT].numpy(), photos, left_out


def _next_line(source) -> list | None:
    """The next JSON line ``send_line`` wrote, or None when the server closed the pipe."""
    line = source.readline()
    return json.loads(line) if line else None


def send_line(stream, value) -> None:
    stream.write(json.dumps(value).encode() + b"\n")
    stream.flush()


def _next_array(source) -> np.ndarray | None:
    try:
        return receive_array(source)
    except ServiceError:  # cut off mid-array: the server is gone
        return None


def lowest_priority(pid: int) -> None:
    """Linux's SCHED_IDLE for process ``pid`` (0: this one) where there is one: it runs only on a
    core nothing else wants and yields it when a request's thread wakes; nice 19 elsewhere."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or a sandbox that forbids it
        if pid == 0:
            os.nice(19)
        else:
            try:
                os.setpriority(os.PRIO_PROCESS, pid, 19)
            except OSError:  # already gone, or not allowed: it lowers itself once it runs
                pass


class InFlight:
    """How many requests the server is answering, as one int64 in a small file that the server and
    the worker both map: the server's event loop counts (one writer), the worker reads. A new file
    (in /dev/shm, memory, where there is one) without ``path``; the one at ``path`` with it."""

    def __init__(self, path: str | None = None):
        self.owner = path is None
        if path is None:
            directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
            descriptor, path = tempfile.mkstemp(prefix="tlp-requests-", dir=directory)
            os.write(descriptor, bytes(8))
            os.close(descriptor)
        self.path = path
        self._file = open(path, "r+b")  # noqa: SIM115 - mapped for the object's life, closed in close()
        self._map = mmap.mmap(self._file.fileno(), 8)
        self._count = np.frombuffer(self._map, dtype=np.int64)

    def enter(self) -> None:
        self._count[0] += 1

    def leave(self) -> None:
        self._count[0] -= 1

    def count(self) -> int:
        return int(self._count[0])

    def close(self) -> None:
        self._count = np.zeros(1, dtype=np.int64)  # a request finishing after this still counts, unshared
        self._map.close()
        self._file.close()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def send_array(stream, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.float32)
    stream.write(json.dumps(list(array.shape)).encode() + b"\n")
    stream.write(array.tobytes())
    stream.flush()


def receive_array(stream) -> np.ndarray | None:
    """The next array ``send_array`` wrote (through a pipe: no seeking), or None at the end."""
    header = stream.readline()
    if not header:
        return None
    shape = json.loads(header)
    size = 4 * int(np.prod(shape))
    data = stream.read(size)
    if len(data) != size:
        raise ServiceError(f"the features ended after {len(data)} of {size} bytes: the server closed the pipe")
    return np.frombuffer(data, dtype=np.float32).reshape(shape)


def _gauge():
    """The process-wide gauge (prometheus_client, which KServe's /metrics serves); one per process."""
    from prometheus_client import REGISTRY, Gauge

    existing = REGISTRY._names_to_collectors.get(GAUGE)  # a second monitor in a process (tests) reuses it
    if existing is not None:
        return existing
    return Gauge(GAUGE, "cross-validated ROC AUC of recent request photos vs the model's training photos "
                 "(0.5: indistinguishable)")


if __name__ == "__main__":
    work(json.loads(sys.argv[1]))
