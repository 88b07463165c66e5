"""Progress of a data prep on this machine: how many photos its workers have read so far.

Beam's DirectRunner runs the workers in processes of their own and reports its metrics only when
the pipeline ends, so each worker process keeps its running count in a small file of its own,
under a folder the step made, and the step's process adds the files up and prints a line every
PROGRESS_EVERY_SECONDS (nothing for a data prep shorter than that). On Dataflow the job's
console page shows progress; the step prints its link instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable

PROGRESS_EVERY_SECONDS = 10.0
WRITE_EVERY_SECONDS = 1.0  # how often a worker process rewrites its count

_lock = threading.Lock()
_counts: dict[str, list[float]] = {}  # this process's [photos, last written] per progress folder


def count(folder: str | None, photos: int) -> None:
    """Called by a worker after each unit it read: adds ``photos`` to this process's count."""
    if folder is None:
        return
    with _lock:
        state = _counts.setdefault(folder, [0, float("-inf")])
        state[0] += photos
        now = time.monotonic()
        if now - state[1] < WRITE_EVERY_SECONDS:
            return
        state[1] = now
        path = os.path.join(folder, str(os.getpid()))
        try:
            with open(path + ".part", "w") as handle:
                handle.write(str(int(state[0])))
            os.replace(path + ".part", path)  # the reader never sees half a number
        except OSError:  # the step has ended and removed the folder: nothing left to report
            pass


def photos_read(folder: str) -> int:
    total = 0
    for name in os.listdir(folder):
        if name.isdigit():
            try:
                with open(os.path.join(folder, name)) as handle:
                    total += int(handle.read() or 0)
            except (OSError, ValueError):
                pass
    return total


class Reporter:
    """``with Reporter(total) as reporter:`` hand ``reporter.folder`` to the workers (``count``);
    a line such as ``data prep: 2,400 of 5,000 images read (48%), 21 s, about 23 s left`` is
    printed every ``every`` seconds while the count moves."""

    def __init__(self, total: int, every: float | None = None, emit: Callable[[str], None] | None = None):
        self.total, self.every = total, PROGRESS_EVERY_SECONDS if every is None else every
        self.emit = emit or (lambda line: print(line, flush=True))
        self.folder = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report, daemon=True)

    def __enter__(self) -> Reporter:
        self.folder = tempfile.mkdtemp(prefix="tlp-prep-progress-")
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _report(self) -> None:
        last = 0
        while not self._stop.wait(self.every):
            done = min(photos_read(self.folder), self.total)
            if done == last:
                continue
            last = done
            seconds = time.monotonic() - self._started
            left = f", about {seconds * (self.total - done) / done:.0f} s left" if done < self.total else ""
            self.emit(f"  data prep: {done:,} of {self.total:,} images read ({done / max(self.total, 1):.0%}), "
                      f"{seconds:.0f} s{left}")
