"""What a person sees while a local run goes, and where the rest goes.

kfp's local runner prints everything to this process's stdout: its own log lines ("Executing
task 'data-prep'", the outputs of each task), and, indented by four spaces, each step's merged
stdout and stderr (kfp's executor input as JSON, TensorFlow's C++ start-up lines, our progress
lines, Keras' epoch lines, a traceback when the step fails). ``StepConsole`` stands in for stdout
during a run and routes each line:

- into ``RUN_DIR/logs/STEP.log`` (the step's full output, without kfp's indent) or
  ``RUN_DIR/logs/run.log`` (kfp's lines outside any step);
- to the terminal: everything with ``verbose``; otherwise a digest: one line when a step starts and
  one when it ends (with its seconds), the step's progress lines and Keras' epoch lines. When a step
  fails, its own error (the traceback it printed) is shown in full.

Progress lines are the ones our steps print as ``  topic: message`` (two spaces, a lowercase
topic, a colon). A progress line that differs from the one before only in its numbers (``features
train: 640/18610 images``) updates it: such runs are thinned to one line every few seconds, and
the last one is always shown.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import time
import typing
import warnings

from tlp.components.lib.specs import ConfigError, ServiceError, TlpError
from tlp.components.lib.steps import STEP_NAMES

LOGS = "logs"
RUN_LOG = "run.log"
TLP_LOG = "tlp.log"
PROGRESS_EVERY_SECONDS = 10.0

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KFP_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - [A-Z]+ - (.*)$")
_STARTED = re.compile(r"^Executing task '([\w.-]+)'")
_FINISHED = re.compile(r"^Task '([\w.-]+)' finished with status (\w+)")
_PROGRESS = re.compile(r"^  [a-z][a-z0-9 _-]*: \S")
_EPOCH = re.compile(r"^Epoch (\d+)/(\d+)$")
_EPOCH_STATS = re.compile(r"^\d+/\d+ - (\S+) - (.*?loss: .*)$")
_NUMBERS = re.compile(r"\d+(?:\.\d+)?")
_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(ConfigError|TrainingDivergedError|\w+Error): (.+)$")


class RunFailed(ServiceError):
    """A pipeline step failed; the message says which, its error and where its log is."""

    def __init__(self, message: str, run_dir: str | None = None):
        super().__init__(message)
        self.run_dir = run_dir


def step_error(lines) -> str | None:
    """The last exception message printed by a failed step (our own error types first)."""
    found = [m for m in map(_ERROR_LINE.match, lines) if m]
    ours = [m for m in found if m.group(1) in ("ConfigError", "TrainingDivergedError")]
    chosen = (ours or found)[-1] if found else None
    return chosen.group(2).strip() if chosen else None


def traceback_of(lines: list[str]) -> list[str]:
    """The last traceback a step printed, through its final exception line (kfp's own lines after it
    left out)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return []
    block = lines[starts[-1]:]
    ends = [i for i, line in enumerate(block) if _ERROR_LINE.match(line) and not line.startswith(" ")]
    return block[: ends[-1] + 1] if ends else block


class _Step:
    def __init__(self, name: str):
        self.name, self.started = name, time.monotonic()
        self.seconds: float | None = None
        self.status: str | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=2000)  # for the error, if it fails


class StepConsole(io.TextIOBase):
    """Stands in for stdout while kfp.local runs a pipeline (see the module's docstring).

    ``run_dir_of`` returns the run's directory once kfp has created it (None before); lines are kept
    in memory until then. ``terminal`` is where the digest (or, ``verbose``, everything) goes."""

    def __init__(self, run_dir_of, terminal=None, verbose: bool = False):
        super().__init__()
        self.terminal = terminal or sys.stdout
        self.verbose = verbose
        self._run_dir_of = run_dir_of
        self.run_dir: str | None = None
        self.steps: dict[str, _Step] = {}
        self.current: _Step | None = None
        self.failed: str | None = None
        self._partial = ""
        self._pending: list[tuple[str, str]] = []  # (log file name, line) until the run dir exists
        self._files: dict[str, typing.IO[str]] = {}
        self._epoch: str | None = None
        self._held: tuple[str, str, float, bool] | None = None  # template, line, shown at, shown?

    # --- the stream ----------------------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *complete, self._partial = (self._partial + text).split("\n")
        for line in complete:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        for handle in self._files.values():
            handle.flush()

    def close(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = ""
        self._flush_progress()
        self._bind_run_dir()
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    # --- results -------------------------------------------------------------------------------

    @property
    def seconds(self) -> dict[str, float]:
        return {name: step.seconds for name, step in self.steps.items() if step.seconds is not None}

    @property
    def logs_dir(self) -> str | None:
        return os.path.join(self.run_dir, LOGS) if self.run_dir else None

    def log_path(self, step: str) -> str | None:
        return os.path.join(self.logs_dir, f"{step}.log") if self.logs_dir else None

    # --- routing -------------------------------------------------------------------------------

    def _line(self, raw: str) -> None:
        line = _ANSI.sub("", raw)
        kfp = _KFP_LINE.match(line)
        if kfp:
            self._kfp_line(kfp.group(1), line, raw)
            return
        step = self.current
        if step is not None and step.status is None and line.startswith("    "):
            line = line[4:]  # kfp's indent of the step's own output
        self._log(step.name if step else None, line)
        if step is not None and step.status is None:
            step.lines.append(line)
        if self.verbose:
            self._show(raw)
        elif step is not None and step.status is None:
            self._digest(line)

    def _kfp_line(self, message: str, line: str, raw: str) -> None:
        started, finished = _STARTED.match(message), _FINISHED.match(message)
        if started:
            self._flush_progress()
            self.current = self.steps[started.group(1)] = _Step(started.group(1))
        elif message.startswith("Pipeline "):  # kfp's closing line belongs to no step
            self.current = None
        self._log(self.current.name if self.current else None, line)
        if self.verbose:
            self._show(raw)
        if started and not self.verbose:
            self._show(f"step {self._numbered(started.group(1))}")
        if finished and self.current is not None and self.current.name == finished.group(1):
            step = self.current
            self._flush_progress()
            step.seconds, step.status = round(time.monotonic() - step.started, 2), finished.group(2)
            if step.status != "SUCCESS":
                self.failed = step.name
            if not self.verbose:
                verdict = "done in" if step.status == "SUCCESS" else f"{step.status} after"
                self._show(f"step {self._numbered(step.name)} {verdict} {step.seconds:.1f} s")

    @staticmethod
    def _numbered(name: str) -> str:
        return f"{STEP_NAMES.index(name) + 1}/{len(STEP_NAMES)} {name}" if name in STEP_NAMES else name

    def _digest(self, line: str) -> None:
        """The readable part of a step's output: progress lines and Keras' epoch lines."""
        epoch = _EPOCH.match(line)
        if epoch:
            self._epoch = f"epoch {epoch.group(1)}/{epoch.group(2)}"
            return
        stats = _EPOCH_STATS.match(line)
        if stats and self._epoch:
            self._flush_progress()
            metrics = [part.replace(": ", " ") for part in stats.group(2).split(" - ") if ": " in part]
            self._show(f"  {self._epoch}: {', '.join(metrics)} ({stats.group(1)})")
            self._epoch = None
            return
        if _PROGRESS.match(line):
            self._progress(line)

    def _progress(self, line: str) -> None:
        template, now = _NUMBERS.sub("#", line), time.monotonic()
        held = self._held
        if held and held[0] == template:
            if now - held[2] >= PROGRESS_EVERY_SECONDS:
                self._show(line)
                self._held = (template, line, now, True)
            else:
                self._held = (template, line, held[2], False)
            return
        self._flush_progress()
        self._show(line)
        self._held = (template, line, now, True)

    def _flush_progress(self) -> None:
        """Shows the last line of a thinned run of progress updates, if it was not shown."""
        if self._held and not self._held[3]:
            self._show(self._held[1])
        self._held = None

    def _show(self, line: str) -> None:
        self.terminal.write(line + "\n")
        self.terminal.flush()

    # --- log files -----------------------------------------------------------------------------

    def _log(self, step: str | None, line: str) -> None:
        name = f"{step}.log" if step else RUN_LOG
        if self._bind_run_dir():
            self._file(name).write(line + "\n")
        else:
            self._pending.append((name, line))

    def _bind_run_dir(self) -> bool:
        if self.run_dir is None:
            self.run_dir = self._run_dir_of()
            if self.run_dir is None:
                return False
            os.makedirs(os.path.join(self.run_dir, LOGS), exist_ok=True)
            for name, line in self._pending:
                self._file(name).write(line + "\n")
            self._pending.clear()
        return True

    def _file(self, name: str):
        if name not in self._files:
            assert self.run_dir is not None, "log lines are written only once the run folder is known"
            self._files[name] = open(os.path.join(self.run_dir, LOGS, name), "a", encoding="utf-8")  # noqa: SIM115
        return self._files[name]

    # --- failures ------------------------------------------------------------------------------

    def explain_failure(self) -> RunFailed:
        """The error to end a failed run with: the step, its own error sentence, its log; the step's
        traceback is shown first (in full) unless everything was streamed already."""
        name = self.failed or (self.current.name if self.current else None)
        step = self.steps.get(name) if name else None
        lines = list(step.lines) if step else []
        if not self.verbose and lines:
            shown = traceback_of(lines) or lines[-20:]
            self._show(f"step {name} failed; the end of its output:")
            for line in shown:
                self._show("  | " + line)
        message = step_error(lines) or "see its log"
        log = f"; its full log: {self.log_path(name)}" if name and self.log_path(name) else ""
        kept = f"; outputs of the finished steps are kept in {self.run_dir}" if self.run_dir else ""
        return RunFailed(f"step {name or 'a step'} failed: {message}{log}{kept}", self.run_dir)


@contextlib.contextmanager
def routed_output(run_dir_of, verbose: bool = False):
    """Runs a kfp.local call with stdout routed through a ``StepConsole`` (yielded); Python
    warnings raised meanwhile (e.g. kfp's "non-Python base image" per task) go through logging
    into the step's log. On failure raises ``RunFailed`` naming the step and its error."""
    console = StepConsole(run_dir_of, terminal=sys.stdout, verbose=verbose)
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(console):
            warnings.simplefilter("default")
            try:
                yield console
            except RuntimeError as error:  # kfp.local's way of saying a task failed
                console.close()
                raise console.explain_failure() from error
    finally:
        logging.captureWarnings(False)
        console.close()


class NativeLog:
    """Where what native code wrote to stderr during ``native_stderr_captured`` ends up: set
    ``run_dir`` once the run has one, and it is kept in ``RUN_DIR/logs/tlp.log``. Without a run
    directory it is kept only when the command failed (``keep``: set by an exception other than
    a bad setting, or by the caller): then ``kept`` is the file's path, for the error to name."""

    def __init__(self):
        self.run_dir: str | None = None
        self.keep = False
        self.kept: str | None = None


@contextlib.contextmanager
def native_stderr_captured(enabled: bool = True, native: NativeLog | None = None):
    """Sends what native code writes to file descriptor 2 (TensorFlow's C++ start-up lines, which
    no setting silences before absl is initialised, libjpeg's decoder warnings) to a file, while
    Python's ``sys.stderr`` keeps writing to the terminal. Yields a ``NativeLog`` (``native``, or a
    new one); on the way out the lines are moved to ``RUN_DIR/logs/tlp.log`` if its ``run_dir`` was
    set, kept where they are if the command failed, else dropped. ``enabled=False``: no capture
    (``--verbose``)."""
    native = native or NativeLog()
    if not enabled:
        yield native
        return
    sys.stderr.flush()
    handle = tempfile.NamedTemporaryFile("w+b", prefix="tlp-native-", suffix=".log", delete=False)  # noqa: SIM115
    saved = os.dup(2)
    python_stderr = sys.stderr
    # Python's stderr keeps the terminal; one that is not file descriptor 2 (a test's capture) stays as it is.
    rewired = _writes_to_fd2(python_stderr)
    if rewired:
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), write_through=True,
                                      encoding=getattr(python_stderr, "encoding", None) or "utf-8",
                                      errors="backslashreplace")
    os.dup2(handle.fileno(), 2)
    try:
        yield native
    except BaseException as error:
        native.keep = not isinstance(error, ConfigError)  # a bad setting's sentence says it all
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if rewired:
            sys.stderr.close()
            sys.stderr = python_stderr
        handle.close()
        _keep_native_log(handle.name, native)


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False


def _keep_native_log(path: str, native: NativeLog) -> None:
    if native.run_dir and os.path.getsize(path):
        os.makedirs(os.path.join(native.run_dir, LOGS), exist_ok=True)
        with open(path, "rb") as source, open(os.path.join(native.run_dir, LOGS, TLP_LOG), "ab") as target:
            target.write(source.read())
    elif native.keep and os.path.getsize(path):
        native.kept = path
        return
    os.unlink(path)


def write_traceback(error: BaseException, directory: str | None = None) -> str:
    """Writes ``error``'s full traceback to a new file (in ``directory`` if given, else the temp
    directory) and returns its path: the console shows one line, the file the rest."""
    import traceback

    if directory:
        os.makedirs(directory, exist_ok=True)
    descriptor, path = tempfile.mkstemp(prefix=f"tlp-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log",
                                        dir=directory or None)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("".join(traceback.format_exception(error)))
    return path


def exit_code(run: typing.Callable[[], int], *, prog: str = "tlp", capture_native: bool = False,
              logs_dir: typing.Callable[[], str | None] = lambda: None) -> int:
    """Runs a command and turns how it ended into an exit code and at most a few lines: an error
    raised on purpose (``TlpError``) is its one sentence and its code; Google Cloud's refusals
    exit 1 with what to check; anything else is a bug, shown in one line with the file its
    traceback went to (in ``logs_dir()``, else the temp directory). ``capture_native``: what
    TensorFlow's native code writes to stderr goes to a file, named if the command fails."""
    from google.api_core.exceptions import GoogleAPICallError  # a cloud SDK's: imported where it is used

    native = NativeLog()
    try:
        with native_stderr_captured(enabled=capture_native, native=native):
            code = run()
            native.keep = code != 0
    except TlpError as error:  # raised on purpose: its one sentence and its exit code
        print(f"{prog}: error: {error}", file=sys.stderr)
        _name_native_log(native, prog)
        return error.exit_code
    except GoogleAPICallError as error:  # e.g. a missing permission or API, or no route to Google
        check = ("that the serving account may read the model's gs:// location (roles/storage.objectViewer)"
                 if prog == "tlp-serve" else "the project, region, that the Vertex AI API is enabled and your "
                 "account's roles")
        print(f"{prog}: error: Google Cloud refused the request: {error.code} {error.message}; check {check}.",
              file=sys.stderr)
        _name_native_log(native, prog)
        return 1
    except Exception as error:  # a bug: one line here, the traceback (and native lines) in a file
        path = write_traceback(error, logs_dir())
        if native.kept:
            with open(native.kept, encoding="utf-8", errors="replace") as source, open(path, "a") as target:
                target.write("\nWhat native code (TensorFlow, libjpeg) wrote to stderr:\n" + source.read())
            os.unlink(native.kept)
        message = (str(error).strip().splitlines() or [""])[0]
        print(f"{prog}: error: unexpected {type(error).__name__}: {message}; full traceback in {path}",
              file=sys.stderr)
        return 1
    _name_native_log(native, prog)
    return code


def _name_native_log(native: NativeLog, prog: str) -> None:
    if native.kept:
        print(f"{prog}: what TensorFlow's native code wrote to stderr is in {native.kept}", file=sys.stderr)
