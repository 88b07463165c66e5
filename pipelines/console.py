"""What a person sees while a run goes: each step's time (from kfp's own log records), and a
failed step's own error sentence repeated at the end instead of "see above"."""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import sys


class RunFailed(RuntimeError):
    """A pipeline step failed; the message says which and where its outputs are."""


class StepClock(logging.Filter):
    """Times each task from kfp.local's own 'Executing task' / 'finished' log records.
    A filter on the root logger survives kfp's swapping of handlers."""

    pattern = re.compile(r"Task .*?'([\w-]+)'.* finished with status|Executing task .*?'([\w-]+)'")

    def __init__(self):
        super().__init__()
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.failed: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(record.getMessage()))
        match = self.pattern.search(message)
        if match and match.group(2):
            self.started[match.group(2)] = record.created
        elif match and match.group(1):
            task = match.group(1)
            self.seconds[task] = round(record.created - self.started.get(task, record.created), 2)
            if "FAILURE" in message:
                self.failed = task
        return True


class _TailTee:
    """Passes kfp's output through to the terminal and keeps the last lines, so a failed step's
    own error sentence can be repeated at the end instead of "see above"."""

    def __init__(self, stream, keep: int = 400):
        self.stream, self.lines, self._partial = stream, collections.deque(maxlen=keep), ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        *complete, self._partial = (self._partial + text).split("\n")
        self.lines.extend(complete)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(ConfigError|TrainingDivergedError|\w+Error): (.+)$")


def step_error(lines) -> str | None:
    """The last exception message printed by a failed step (our own error types first)."""
    found = [m for m in map(_ERROR_LINE.match, lines) if m]
    ours = [m for m in found if m.group(1) in ("ConfigError", "TrainingDivergedError")]
    chosen = (ours or found or [None])[-1]
    return chosen.group(2).strip() if chosen else None


@contextlib.contextmanager
def failures_explained(what: str, clock: StepClock | None = None, run_dir_of=None):
    """Runs a kfp.local call; on failure raises RunFailed naming the step and its error."""
    tee = _TailTee(sys.stdout)
    try:
        with contextlib.redirect_stdout(tee):
            yield
    except RuntimeError as error:
        step = (clock.failed if clock else None) or what
        message = step_error(tee.lines) or "its error is printed above"
        kept = run_dir_of() if run_dir_of else None
        where = f"; outputs of the finished steps are kept in {kept}" if kept else ""
        raise RunFailed(f"step {step} failed: {message}{where}") from error
