"""The console digest of a local run, fed with output shaped like kfp.local's (2.17): what reaches
the terminal, what goes to RUN_DIR/logs, and what a failed step shows."""

import io
import os

import pytest

from tlp.pipelines import console as console_lib
from tlp.pipelines.console import StepConsole

EXECUTOR_INPUT = ['[KFP Executor 2026-11-28 12:39:14,498 INFO]: Got executor_input:', '{', '    "inputs": {}', '}']
TF_NOISE = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
            "I0000 00:00:1795869554.822500   28314 port.cc:153] oneDNN custom operations are on."]


def _kfp(message):
    return f"12:39:14.389 - INFO - {message}\n"


def _streamed(console, lines):
    for line in lines:
        console.write("    ")  # kfp's indented print writes the indent first
        console.write(line + "\n")


def _step(console, name, lines, status="SUCCESS"):
    console.write(_kfp(f"Executing task \x1b[96m'{name}'\x1b[0m"))
    console.write(_kfp("Streamed logs:\n"))
    _streamed(console, lines)
    console.write("    \n\n")
    if status:
        console.write(_kfp(f"Task \x1b[96m'{name}'\x1b[0m finished with status \x1b[92m{status}\x1b[0m"))
        console.write(_kfp(f"Task '{name}' outputs:\n    skipped: 0"))
        console.write("-" * 80 + "\n")


@pytest.fixture
def run(tmp_path):
    run_dir = tmp_path / "transfer-learning-1"
    state = {"exists": False}
    terminal = io.StringIO()
    console = StepConsole(lambda: str(run_dir) if state["exists"] else None, terminal=terminal)
    return console, terminal, run_dir, state


def test_digest_shows_steps_progress_and_epochs_and_logs_keep_everything(run):
    console, terminal, run_dir, state = run
    console.write(_kfp("Running pipeline: 'transfer-learning'"))
    _step(console, "data-prep", [*EXECUTOR_INPUT, *TF_NOISE, "  data prep: sample:30 -> 2 classes ['a', 'b']"])
    state["exists"] = True  # kfp created the run directory during the first step
    _step(console, "feature-extraction", [
        *EXECUTOR_INPUT, *TF_NOISE, "  features train: 48/48 images (87 img/s)", "Epoch 1/2",
        "[KFP Executor 2026-11-28 12:39:26,241 INFO]: Sharding callback duration: 12 microseconds",
        "3/3 - 1s - loss: 0.7304 - accuracy: 0.4792 - val_loss: 1.4456 - val_accuracy: 0.8333 - 1s/epoch - 1s/step",
        "Epoch 2/2", "3/3 - 0s - loss: 0.5 - accuracy: 0.8 - val_loss: 1.3 - val_accuracy: 0.8 - 1s/epoch - 1s/step",
        "/x/subprocess_task_handler.py:81: RuntimeWarning: custom or non-Python base image", "  warnings.warn(",
    ])
    console.write(_kfp("Pipeline 'transfer-learning' finished with status SUCCESS"))
    console.close()

    shown = terminal.getvalue().splitlines()
    assert shown[0] == "step 2/7 data-prep"
    assert shown[1] == "  data prep: sample:30 -> 2 classes ['a', 'b']"
    assert shown[2].startswith("step 2/7 data-prep done in ") and shown[2].endswith(" s")
    assert shown[3:7] == [
        "step 4/7 feature-extraction",
        "  features train: 48/48 images (87 img/s)",
        "  epoch 1/2: loss 0.7304, accuracy 0.4792, val_loss 1.4456, val_accuracy 0.8333 (1s)",
        "  epoch 2/2: loss 0.5, accuracy 0.8, val_loss 1.3, val_accuracy 0.8 (0s)",
    ]
    assert shown[7].startswith("step 4/7 feature-extraction done in ") and len(shown) == 8
    assert set(console.seconds) == {"data-prep", "feature-extraction"}

    logs = run_dir / "logs"
    assert sorted(os.listdir(logs)) == ["data-prep.log", "feature-extraction.log", "run.log"]
    prep = (logs / "data-prep.log").read_text()
    # Kept from before the run directory existed, without kfp's indent and colours.
    assert "Got executor_input:" in prep and '\n    "inputs": {}\n' in prep and "oneDNN" in prep
    assert "\x1b[" not in prep and "Task 'data-prep' outputs:" in prep
    assert "Sharding callback" in (logs / "feature-extraction.log").read_text()
    assert "Pipeline 'transfer-learning' finished" in (logs / "run.log").read_text()


def test_verbose_streams_everything(run):
    console, terminal, _run_dir, state = run
    console.verbose = True
    state["exists"] = True
    _step(console, "data-prep", [*EXECUTOR_INPUT, *TF_NOISE, "  data prep: done"])
    console.close()
    shown = terminal.getvalue()
    assert "Got executor_input:" in shown and "oneDNN" in shown and "  data prep: done" in shown


def test_progress_updates_are_thinned_and_the_last_one_is_shown(run, monkeypatch):
    console, terminal, _run_dir, state = run
    state["exists"] = True
    clock = iter(range(0, 1000, 1))
    monkeypatch.setattr(console_lib.time, "monotonic", lambda: float(next(clock)))
    lines = [f"  data prep: read {n}/10000 files" for n in range(500, 10001, 500)]
    _step(console, "data-prep", [*lines, "  data prep: images per split {'train': 8000}, skipped 0"])
    console.close()
    shown = [line for line in terminal.getvalue().splitlines() if "read" in line]
    assert shown[0] == "  data prep: read 500/10000 files" and shown[-1] == "  data prep: read 10000/10000 files"
    assert 2 <= len(shown) < len(lines)


def test_a_failed_step_shows_its_traceback_and_names_its_log(run):
    console, terminal, run_dir, state = run
    state["exists"] = True
    _step(console, "data-prep", [
        *EXECUTOR_INPUT, "Traceback (most recent call last):", '  File "/x/executor.py", line 1, in run',
        "    raise ConfigError(...)",
        "tlp.components.lib.specs.ConfigError: 6 of 26 image files are unreadable; fix them or raise "
        "--max-skipped-fraction 0.1.",
        "[KFP Executor 2026-11-28 12:39:17,937 INFO]: something after",
    ], status=None)  # kfp raises instead of logging the failure
    failure = console.explain_failure()
    console.close()
    shown = terminal.getvalue()
    assert "step data-prep failed; the end of its output:" in shown
    assert "  | Traceback (most recent call last):" in shown and '  |   File "/x/executor.py"' in shown
    assert "something after" not in shown
    message = str(failure)
    assert message.startswith("step data-prep failed: 6 of 26 image files are unreadable")
    assert f"its full log: {run_dir}/logs/data-prep.log" in message and failure.run_dir == str(run_dir)


def test_native_stderr_goes_to_the_run_log_while_python_stderr_stays(tmp_path, capfd):
    import sys

    with console_lib.native_stderr_captured() as native:
        os.write(2, b"I0000 native start-up line\n")
        print("python says", file=sys.stderr)
        native.run_dir = str(tmp_path)
    assert (tmp_path / "logs" / "tlp.log").read_text() == "I0000 native start-up line\n"
    err = capfd.readouterr().err
    assert "native start-up line" not in err and "python says" in err


def test_native_stderr_is_kept_when_the_command_fails_and_dropped_when_it_is_a_bad_setting(capfd):
    from tlp.components.lib.specs import ConfigError, ServiceError

    failed = console_lib.NativeLog()
    with pytest.raises(ServiceError), console_lib.native_stderr_captured(native=failed):
        os.write(2, b"E0000 failed call to cuInit\n")
        raise ServiceError("the service failed")
    assert open(failed.kept).read() == "E0000 failed call to cuInit\n"
    os.unlink(failed.kept)
    setting = console_lib.NativeLog()
    with pytest.raises(ConfigError), console_lib.native_stderr_captured(native=setting):
        os.write(2, b"E0000 failed call to cuInit\n")
        raise ConfigError("--epochs 0 must be at least 1.")
    assert setting.kept is None
    assert "cuInit" not in capfd.readouterr().err
