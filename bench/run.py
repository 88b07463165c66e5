"""The benchmark suite: ``python -m bench.run [--quick] [--only NAME ...] [--output bench/results.json]``.

Eight benchmarks (one function each, ``bench_*``) on the full-size model (MobileNetV2, alpha 1.0,
160x160, batch 32, calibrated random weights by default: random weights whose BatchNorm
statistics are set from the training images, made once per invocation and timed by no benchmark;
timing does not depend on the weights) and generated images. Every comparison runs both sides in
this invocation, each side in its own fresh child process (``bench.workloads``), and reports
their ratio; the two fine-tuning sides run at the same time, taking turns epoch by epoch. Peak
memory is the child's own (``wait4`` rusage, or VmHWM read inside the child when a phase ends).
This process imports no TensorFlow.

Prints a table and writes ``--output`` as JSON (also after each benchmark, so a partial run
leaves its results). With ``--publish`` (``make bench``) each benchmark that ran also writes
``docs/data/bench-NAME.json`` as it ends: its rows with the date, machine, load and command, from
which the docs site's Benchmarks page (and the cost plan, from ``scale``) is generated. Exit
status 1 only if a benchmark could not run; missed targets are results.
See bench/README.md for what each measurement means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from bench.workloads import first_epoch_adjusted, machine_cpu, training_part_adjusted
from tlp.components.lib.steps import STEP_NAMES

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "bench" / "results.json"
PUBLISH_DIR = REPO / "docs" / "data"  # docs/hooks.py builds the Benchmarks page from bench-NAME.json here
MEMORY_LIMIT_MB = 2500.0  # 2.5 GB, decimal
PIPELINE_STEPS = list(STEP_NAMES)

COMMON = {
    "image_size": 160, "alpha": 1.0, "batch_size": 32, "weights": "calibrated", "seed": 42,
    "learning_rate": 1e-4, "dropout": 0.2, "fine_tune_at": 100,
    # Orchestration runs the tiny settings of the brief through both paths.
    "orchestration_settings": {
        "data": "sample:20", "weights": "none", "alpha": 0.35, "image_size": 64, "epochs": 1,
        "fine_tune_epochs": 1, "max_gap": 1.0, "min_accuracy": 0.0,
    },
}
# Benchmark 10's data set: seed 618 is one whose content split of sample:200 is exactly
# 320/40/40, so its 20 train shards of 16 records divide evenly between 2 workers.
MULTI_WORKER = {"per_class": 200, "seed": 618, "train": 320, "val": 40, "alpha": 0.35}

MODES = {
    "full": {
        **COMMON,
        "budget_seconds": 25 * 60,
        "fe": {"train": 2000, "val": 500, "test": 100}, "fe_epochs": 10,
        "ft_size": 1000, "ft_epochs": 4,
        "reader_passes": 5,
        "scale_sizes": [1000, 2500, 20000], "tune_sizes": [1000, 2500], "tune_epochs": 1,
        "memory_size": 20000, "folder_sizes": [2000], "fresh_sizes": [20000],
        "orchestration": "pipeline",
        "cut_epochs": 10, "photos": 5000,
        "multi_worker": {**MULTI_WORKER, "image_size": 96, "epochs": 2},
    },
    "quick": {
        **COMMON,
        "budget_seconds": 4 * 60,
        "fe": {"train": 200, "val": 100, "test": 20}, "fe_epochs": 2,
        "ft_size": 200, "ft_epochs": 2,
        "reader_passes": 8,
        "scale_sizes": [200, 1000], "tune_sizes": [200, 1000], "tune_epochs": 1,
        "memory_size": 1000, "folder_sizes": [], "fresh_sizes": [1000],
        "orchestration": "component",
        "cut_epochs": 2, "photos": 300,
        "multi_worker": {**MULTI_WORKER, "image_size": 64, "epochs": 1},
    },
}


# --weights values that make calibrated random weights, and the calibration each uses
# (bench.workloads.calibrate_weights).
CALIBRATED = {"calibrated": "gain", "calibrated-channels": "channels"}
WEIGHTS_NOTES = {
    "calibrated": (
        "weights=calibrated (default): random MobileNetV2 weights (seed 42) whose BatchNorm statistics are set from "
        "64 of the training images so the pooled features are of order 1, as with trained weights (uncalibrated "
        "random weights give ~1e-12, on which the tutorial's head cannot learn at lr 1e-4). One gain per BatchNorm "
        "outside the residual branches, so the network computes nearly what the uncalibrated one does, rescaled. "
        "Both sides load the same .h5 file; making it is timed by neither. See bench/README.md."
    ),
    "calibrated-channels": (
        "weights=calibrated-channels: every BatchNorm normalizes its input per channel (an LSUV-style "
        "initialisation). Features are of order 1 but carry little class signal: both heads stay near chance."
    ),
    "none": (
        "weights=none: random MobileNetV2 weights give pooled features of ~1e-12; our head standardizes them "
        "(feature_standardization), the tutorial's head has no such layer, so on random weights the tutorial's "
        "head cannot learn at lr 1e-4 and the accuracies differ for that reason, not because features are "
        "cached. With calibrated or ImageNet weights the standardization is a harmless affine map."
    ),
    "imagenet": "weights=imagenet: the pretrained weights, as in the tutorial.",
    "file": "weights from a .h5 file given with --weights; both sides load the same file.",
}


def _weights_label(spec: str) -> str:
    return {"calibrated": "calibrated random", "calibrated-channels": "calibrated random, per channel",
            "none": "random (uncalibrated)", "imagenet": "ImageNet"}.get(spec, os.path.basename(spec))


class ChildFailed(RuntimeError):
    """A measured child process failed; the message names it, its error and its log."""


# --- results ----------------------------------------------------------------------------------


def _fmt(value, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "s":
        return f"{value:.1f} s"
    if unit == "s/1k":
        return f"{value:.2f} s/1k img"
    if unit == "img/s":
        return f"{value:.0f} img/s"
    if unit == "MB":
        return f"{value:,.0f} MB"
    if unit == "pts":
        return f"{value:.1f} pts"
    return f"{value:.3f}{' ' + unit if unit else ''}"


@dataclass
class Report:
    """One benchmark's rows (measurements and checks against a target), notes and raw details."""

    name: str
    title: str
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None
    seconds: float = 0.0
    published: dict = field(default_factory=dict)  # structured figures the docs use beyond the rows (scale)

    def measure(self, label: str, value, unit: str = "") -> None:
        self.rows.append({"label": label, "value": _round(value), "unit": unit, "target": None, "passed": None})

    def check(self, label: str, value, unit: str, target: str, passed: bool) -> None:
        self.rows.append({"label": label, "value": _round(value), "unit": unit, "target": target, "passed": passed})

    def to_json(self) -> dict:
        return {
            "title": self.title, "status": self.status, "error": self.error, "seconds": round(self.seconds, 1),
            "rows": self.rows, "notes": self.notes, "details": self.details,
        }


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _linear_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares t = fixed + slope * n. Returns (fixed seconds, seconds per image)."""
    n_mean, t_mean = _mean(p[0] for p in points), _mean(p[1] for p in points)
    var = sum((n - n_mean) ** 2 for n, _ in points)
    slope = sum((n - n_mean) * (t - t_mean) for n, t in points) / var if var else 0.0
    return t_mean - slope * n_mean, slope


# --- the suite: child processes, generated data -----------------------------------------------


class Suite:
    def __init__(self, mode: str, work_dir: Path, selected: list[str], fork: bool = True):
        self.mode, self.config, self.work, self.selected = mode, MODES[mode], work_dir, selected
        self.logs = work_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self._memo: dict = {}
        self.children: list[dict] = []
        self.fork = fork
        self.server: subprocess.Popen | None = None
        self.server_info: dict | None = None
        self.scale_sizes: list[int] | None = None
        self.kept = False  # --workdir given: generated data stays

    def photo_pool(self) -> str:
        """Where benchmark 12's photos are made once and reused: under --workdir when one is
        given, else a folder of the system's temporary directory that outlives this run."""
        if self.kept:
            return self.path("photos-pool")
        return os.path.join(tempfile.gettempdir(), "tlp-bench-scale-photos")

    def path(self, *parts: str) -> str:
        return str(self.work.joinpath(*parts))

    # processes

    def spawn(self, command: list[str], label: str, timeout: float = 3600) -> dict:
        """Runs ``command`` in its own session; returns its wall seconds, exit code and peak RSS
        (wait4: the process and the descendants it waited for). Kills its session on timeout."""
        log_path = self.logs / f"{label}.log"
        print(f"    {label} ...", flush=True)
        start, machine = time.monotonic(), machine_cpu()
        killed = False
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if not killed and time.monotonic() - start > timeout:
                    os.killpg(proc.pid, signal.SIGKILL)  # the session this suite started for it
                    killed = True
                time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        run = {
            "label": label, "wall_seconds": round(time.monotonic() - start, 2), "exit_code": proc.returncode,
            "peak_rss_mb": round(usage.ru_maxrss * 1024 / 1e6, 1), "log": str(log_path), "timed_out": killed,
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        }
        return self._finish(run, machine)

    def _finish(self, run: dict, machine: tuple, own_cpu: float | None = None) -> dict:
        """Adds how busy the rest of the machine was while the child ran (``own_cpu``: the CPU
        seconds not to count as other processes', default the child's own), records and prints it."""
        busy, total = (now - before for now, before in zip(machine_cpu(), machine, strict=True))
        if total > 0:
            ticks = os.sysconf("SC_CLK_TCK")
            own = run["cpu_seconds"] if own_cpu is None else own_cpu
            run["others_cpu_share"] = round(max(0.0, busy / ticks - own) / (total / ticks), 3)
        self.children.append(run)
        others = ""
        if "others_cpu_share" in run:
            others = f", other processes used {run['others_cpu_share']:.0%} of the CPUs"
        print(f"    {run['label']}: {run['wall_seconds']:.1f} s wall, {run['cpu_seconds']:.1f} s CPU, peak RSS "
              f"{run['peak_rss_mb']:,.0f} MB{others}" + (" (TIMED OUT)" if run["timed_out"] else ""), flush=True)
        return run

    def child(self, workload: str, label: str, fresh: bool = False, **args) -> dict:
        """Runs one workload of bench.workloads in a process of its own (once per invocation: a
        second call with the same arguments returns the first result): forked from the fork
        server, or a fresh interpreter with ``fresh`` (or ``--spawn``). Output directories it is
        given (``run_dir``, ``work_dir``, ``output_dir``, ``root``) are emptied first."""
        key = (workload, json.dumps(args, sort_keys=True))
        if key in self._memo:
            return self._memo[key]
        result_path = self._prepare(label, args)
        if fresh or not self.fork:
            command = [sys.executable, "-m", "bench.workloads", workload, json.dumps(args), str(result_path)]
            run = self.spawn(command, label)
        else:
            run = self.forked(workload, args, result_path, label)
        result = self._collect(label, run, result_path)
        self._memo[key] = result
        return result

    def together(self, jobs: list[tuple[str, str, dict]], timeout: float = 3600) -> list[dict]:
        """Runs several workloads (``(workload, label, args)``) at the same time, each in a process
        of its own (forked, or fresh interpreters with ``--spawn``); returns their results in
        order. Used for the lockstep pair of benchmark 3, whose two sides take turns. Each
        child's ``others_cpu_share`` counts neither child's CPU time."""
        paths = [self._prepare(label, args) for _workload, label, args in jobs]
        for _workload, label, _args in jobs:
            print(f"    {label} ...", flush=True)
        machine, start = machine_cpu(), time.monotonic()
        if self.fork:
            self._start_server()
            request = {"jobs": [{"workload": workload, "args": args, "result": str(path),
                                 "log": str(self.logs / f"{label}.log")}
                                for (workload, label, args), path in zip(jobs, paths, strict=True)],
                       "timeout": timeout}
            self.server.stdin.write(json.dumps(request) + "\n")
            self.server.stdin.flush()
            line = self.server.stdout.readline()
            if not line:
                raise ChildFailed(f"the fork server died running {[job[1] for job in jobs]}\n"
                                  f"{_tail(str(self.logs / 'fork-server.log'))}")
            runs = [{"forked": True, **run} for run in json.loads(line)["runs"]]
        else:
            runs = self._spawn_all(jobs, paths, timeout, start)
        labels = [label for _workload, label, _args in jobs]
        runs = [{"label": label, "log": str(self.logs / f"{label}.log"), "together_with": labels, **run}
                for label, run in zip(labels, runs, strict=True)]
        own = sum(run["cpu_seconds"] for run in runs)
        for run in runs:
            self._finish(run, machine, own_cpu=own)
        return [self._collect(label, run, path) for label, run, path in zip(labels, runs, paths, strict=True)]

    def _spawn_all(self, jobs: list, paths: list, timeout: float, start: float) -> list[dict]:
        procs = []
        for (workload, label, args), path in zip(jobs, paths, strict=True):
            command = [sys.executable, "-m", "bench.workloads", workload, json.dumps(args), str(path)]
            with open(self.logs / f"{label}.log", "w") as log:
                procs.append(subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        runs: dict[int, dict] = {}
        killed = False
        while len(runs) < len(procs):
            for proc in procs:
                if proc.pid in runs:
                    continue
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    runs[proc.pid] = {
                        "exit_code": proc.returncode, "wall_seconds": round(time.monotonic() - start, 2),
                        "peak_rss_mb": round(usage.ru_maxrss * 1024 / 1e6, 1), "timed_out": killed,
                        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
                    }
            if not killed and time.monotonic() - start > timeout:
                for proc in procs:
                    if proc.pid not in runs:
                        os.killpg(proc.pid, signal.SIGKILL)  # the session this suite started for it
                killed = True
            time.sleep(0.05)
        return [runs[proc.pid] for proc in procs]

    def _prepare(self, label: str, args: dict) -> Path:
        """Empties the output directories a workload is given; returns its result file's path."""
        for name in ("run_dir", "work_dir", "output_dir", "root"):
            if name in args:
                shutil.rmtree(args[name], ignore_errors=True)
        result_path = self.logs / f"{label}.result.json"
        result_path.unlink(missing_ok=True)
        return result_path

    def _collect(self, label: str, run: dict, result_path: Path) -> dict:
        try:
            payload = json.loads(result_path.read_text())
        except (OSError, ValueError):
            payload = {"ok": False, "error": f"exited with status {run['exit_code']} without a result"}
        if not payload.get("ok"):
            raise ChildFailed(f"{label} failed: {payload.get('error')} (log: {run['log']})\n{_tail(run['log'])}")
        return {**payload["result"], "process": run, "child_seconds": payload.get("child_seconds")}

    def _start_server(self) -> None:
        """Starts the fork server once (it imports TensorFlow, tf_keras and the project's libraries)."""
        if self.server is not None:
            return
        print("    starting the fork server (imports TensorFlow once) ...", flush=True)
        with open(self.logs / "fork-server.log", "w") as log:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "bench.workloads", "--serve"], cwd=REPO, env=self.env, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            )
        line = self.server.stdout.readline()
        if not line:
            raise ChildFailed(f"the fork server did not start\n{_tail(str(self.logs / 'fork-server.log'))}")
        self.server_info = json.loads(line)
        print(f"    fork server ready: {self.server_info['preload_seconds']:.1f} s, "
              f"RSS {self.server_info['rss_mb']:,.0f} MB (every forked child starts from it)", flush=True)

    def forked(self, workload: str, args: dict, result_path: Path, label: str, timeout: float = 3600) -> dict:
        """Asks the fork server to run ``workload`` in a child it forks; returns like ``spawn``."""
        self._start_server()
        log_path = self.logs / f"{label}.log"
        request = {"workload": workload, "args": args, "result": str(result_path), "log": str(log_path),
                   "timeout": timeout}
        print(f"    {label} ...", flush=True)
        machine = machine_cpu()
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        line = self.server.stdout.readline()
        if not line:
            raise ChildFailed(f"the fork server died running {label}\n{_tail(str(self.logs / 'fork-server.log'))}")
        run = {"label": label, "log": str(log_path), "forked": True, **json.loads(line)}
        return self._finish(run, machine)

    def close(self) -> None:
        if self.server is not None:
            self.server.stdin.close()  # the server's loop ends; it exits
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()  # the server process this suite started
                self.server.wait()
            self.server = None

    # shared inputs

    def datasets(self) -> dict:
        """The data set of benchmark 1 with the brief's exact split sizes (``fe``)."""
        if "datasets" in self._memo:
            return self._memo["datasets"]
        c = self.config
        result = self.child("make_datasets", "datasets", root=self.path("data"), sets={"fe": c["fe"]},
                            image_size=c["image_size"], seed=c["seed"])
        info = {"dirs": {"fe": self.path("data", "fe")}, "counts": result["sets"], "seconds": result["seconds"]}
        self._memo["datasets"] = info
        return info

    def weights(self) -> str:
        """The ``weights`` argument both sides of every benchmark get: ``none``, ``imagenet`` or a
        .h5 file. For ``calibrated`` (the default) and ``calibrated-channels`` the calibrated
        random weights are made once per invocation, in a child of their own (timed by no
        benchmark), from the training images of benchmark 1's data set."""
        spec = self.config["weights"]
        if spec not in CALIBRATED:
            return spec
        if "weights" not in self._memo:
            c = self.config
            data = self.datasets()
            self._memo["weights"] = self.child(
                "calibrate_weights", "calibrate-weights", dataset_dir=data["dirs"]["fe"],
                output=self.path("weights", f"mobilenet_v2_{spec}.h5"), alpha=c["alpha"], image_size=c["image_size"],
                seed=c["seed"], method=CALIBRATED[spec],
            )
        return self._memo["weights"]["path"]

    def calibration(self) -> dict | None:
        """What ``weights`` made, if it made calibrated weights in this invocation."""
        made = self._memo.get("weights")
        return {k: v for k, v in made.items() if k != "process"} if made else None

    def fine_tuning(self) -> dict:
        """The fine-tuning pair benchmarks 2 and 3 measure, on the scaling data set of ``ft_size``
        images from the feature-extraction model trained on it: ours (``fine_tune`` as the
        component calls it) and plain (``model.fit`` on in-memory tensors), each ``ft_epochs``
        epochs in a process of its own, run at the same time in lockstep: they take turns, one
        epoch each (ours first), so each pair of epochs sees nearly the same machine load."""
        if "fine_tuning" in self._memo:
            return self._memo["fine_tuning"]
        c, size = self.config, self.config["ft_size"]
        prep = self.prep(size)
        self.head(size)  # writes the model both sides start from
        dataset_dir, model_in = self.path("scale", str(size), "dataset"), self.path("scale", str(size), "runs", "head")
        turns = self.work / "lockstep"
        shutil.rmtree(turns, ignore_errors=True)
        turns.mkdir(parents=True)
        for name in ("ours", "plain"):
            os.mkfifo(turns / name)
        common = {"dataset_dir": dataset_dir, "model_in": model_in, "epochs": c["ft_epochs"],
                  "batch_size": c["batch_size"], "seed": c["seed"], "fine_tune_at": c["fine_tune_at"],
                  "learning_rate": c["learning_rate"]}
        ours, plain = self.together([
            ("fine_tune_ours", "fine-tuning-ours",
             {**common, "run_dir": self.path("fine-tuning", "ours"),
              "lockstep": {"wait": str(turns / "ours"), "pass": str(turns / "plain"), "first": True}}),
            ("fine_tune_plain", "fine-tuning-plain",
             {**common, "lockstep": {"wait": str(turns / "plain"), "pass": str(turns / "ours"), "first": False}}),
        ])
        shutil.rmtree(turns, ignore_errors=True)
        result = {"dataset_dir": dataset_dir, "model_in": model_in, "counts": prep["num_examples"],
                  "ours": ours, "plain": plain}
        self._memo["fine_tuning"] = result
        return result

    def prep(self, size: int) -> dict:
        c = self.config
        return self.child(
            "prep", f"data-prep-{size}", fresh=size in c["fresh_sizes"], data=f"sample:{size // 2}",
            output_dir=self.path("scale", str(size), "dataset"), image_size=c["image_size"], seed=c["seed"],
        )

    def head(self, size: int) -> dict:
        """Feature extraction at ``size`` images, then (at the ``tune_sizes``) ``tune_epochs`` of
        fine-tuning in the same process (benchmark 5's fine-tuning epoch)."""
        c = self.config
        tune_epochs = c["tune_epochs"] if size in c["tune_sizes"] else 0
        self.prep(size)  # its output is this run's input
        return self.child(
            "head_then_tune", f"feature-extraction-{size}", fresh=size in c["fresh_sizes"],
            dataset_dir=self.path("scale", str(size), "dataset"), run_dir=self.path("scale", str(size), "runs"),
            alpha=c["alpha"], weights=self.weights(), head_epochs=c["fe_epochs"], tune_epochs=tune_epochs,
            batch_size=c["batch_size"], seed=c["seed"], fine_tune_at=c["fine_tune_at"],
            learning_rate=c["learning_rate"],
        )


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


# --- the benchmarks ---------------------------------------------------------------------------

BENCHMARKS: dict = {}


def benchmark(name: str, title: str):
    def register(func):
        BENCHMARKS[name] = (title, func)
        return func

    return register


@benchmark("feature_extraction", "1. Feature extraction: ours (features cached) vs the tutorial (fit on images)")
def bench_feature_extraction(suite: Suite, report: Report) -> None:
    c = suite.config
    data = suite.datasets()
    counts = data["counts"]["fe"]
    size = f"{counts['train']}+{counts['val']} img, {c['fe_epochs']} ep"
    weights = suite.weights()  # made before either side starts; in neither side's time
    ours = suite.child(
        "train_head", "feature-extraction-ours", dataset_dir=data["dirs"]["fe"],
        run_dir=suite.path("runs", "feature-extraction-ours"), alpha=c["alpha"], weights=weights,
        epochs=c["fe_epochs"], batch_size=c["batch_size"], seed=c["seed"],
    )
    tutorial = suite.child(
        "tutorial", "feature-extraction-tutorial", dataset_dir=data["dirs"]["fe"], image_size=c["image_size"],
        epochs=c["fe_epochs"], batch_size=c["batch_size"], learning_rate=c["learning_rate"], dropout=c["dropout"],
        seed=c["seed"], weights=weights,
    )
    speedup = tutorial["seconds"] / ours["seconds"]
    report.measure(f"ours: train_head end to end ({size})", ours["seconds"], "s")
    report.measure(f"tutorial: build + fit on images ({size})", tutorial["seconds"], "s")
    report.check("speed-up end to end (tutorial / ours)", speedup, "x", ">= 6x", speedup >= 6)
    cpu_speedup = tutorial["cpu_seconds"] / ours["cpu_seconds"]
    report.check("same in CPU seconds (robust to other load)", cpu_speedup, "x", ">= 6x", cpu_speedup >= 6)
    report.measure("other processes' CPU share during ours / tutorial", _others(ours, tutorial))
    _load_note(report, ours, tutorial)
    report.measure("tutorial: mean epoch (train + validation)", _mean(e["seconds"] for e in tutorial["epochs"]), "s")
    report.measure("final val accuracy: ours", ours["val_accuracy"])
    report.measure("final val accuracy: tutorial", tutorial["val_accuracy"])
    gap = abs(ours["val_accuracy"] - tutorial["val_accuracy"]) * 100
    report.check("val accuracy difference", gap, "pts", "<= 2 pts", gap <= 2)
    report.measure("weights (both sides)", _weights_label(c["weights"]))
    calibration = suite.calibration()
    if calibration:
        report.measure("calibrated weights: pooled features, mean / std across images",
                       f"{calibration['pooled_feature_mean']:.3f} / "
                       f"{calibration['pooled_feature_std_across_images']:.3f}")
    report.notes.append(WEIGHTS_NOTES.get(c["weights"], WEIGHTS_NOTES["file"]))
    report.notes.append("ours includes saving the model and its feature cache; the tutorial side saves nothing.")
    report.details = {
        "ours": {k: ours[k] for k in ("seconds", "cpu_seconds", "val_accuracy", "history", "peak_rss_mb", "process")},
        "tutorial": {k: tutorial[k] for k in ("seconds", "cpu_seconds", "val_accuracy", "history", "epochs",
                                              "peak_rss_mb", "process")},
        "images": counts, "epochs": c["fe_epochs"], "weights": c["weights"], "calibration": calibration,
    }


@benchmark("input_pipeline", "2. Input pipeline: prepared-data reader vs the fine-tuning step it feeds")
def bench_input_pipeline(suite: Suite, report: Report) -> None:
    c = suite.config
    tuned = suite.fine_tuning()
    reader = suite.child(
        "reader", "input-pipeline-reader", dataset_dir=tuned["dataset_dir"], split="train",
        batch_size=c["batch_size"], passes=c["reader_passes"], seed=c["seed"],
    )
    steady = reader["passes"][1:] or reader["passes"]
    reader_rate = sum(p["images"] for p in steady) / sum(p["seconds"] for p in steady)
    first = reader["passes"][0]
    epochs = tuned["ours"]["epochs"][1:] or tuned["ours"]["epochs"]
    train_images = tuned["counts"]["train"]
    tune_rate = train_images * len(epochs) / sum(e["train_seconds"] for e in epochs)
    ratio = reader_rate / tune_rate
    report.measure(f"reader: read_split(train, 32), {train_images} img, first pass", first["images"] / first["seconds"],
                   "img/s")
    report.measure(f"reader: passes 2..{len(reader['passes'])} (parse, decode, shuffle, batch)", reader_rate, "img/s")
    report.measure(f"fine-tuning (from layer {c['fine_tune_at']}): training part of epochs 2..n", tune_rate, "img/s")
    report.check("reader / fine-tuning", ratio, "x", ">= 3x", ratio >= 3)
    report.notes.append(
        "The reader runs alone in its process; during training it shares the 2 cores with the model, so its "
        "margin is what keeps the model from waiting on data. Fine-tuning images/s come from benchmark 3's run."
    )
    report.details = {"reader_passes": reader["passes"], "train_images": train_images,
                      "fine_tuning_epochs": [_epoch_row(e) for e in epochs]}


@benchmark("fine_tuning", "3. Fine-tuning: training.fine_tune vs a plain model.fit on in-memory tensors")
def bench_fine_tuning(suite: Suite, report: Report) -> None:
    c = suite.config
    tuned = suite.fine_tuning()
    counts, ours, plain = tuned["counts"], tuned["ours"], tuned["plain"]
    ours_epochs, plain_epochs = ours["epochs"][1:], plain["epochs"][1:]
    span = f"epochs 2..{c['ft_epochs']}, {counts['train']}+{counts['val']} img"

    def median(epochs, key):
        return statistics.median(e[key] for e in epochs)

    def paired(key):  # plain / ours for each pair of epochs run back to back
        return [p[key] / o[key] for o, p in zip(ours_epochs, plain_epochs, strict=True)]

    report.measure(f"ours: fine_tune, median epoch ({span})", median(ours_epochs, "seconds"), "s")
    report.measure(f"plain: model.fit on tensors, median epoch ({span})", median(plain_epochs, "seconds"), "s")
    pairs = paired("seconds")
    ratio = statistics.median(pairs)
    report.check("throughput ours / plain (whole epoch; median of pairs)", ratio, "x", ">= 0.95x", ratio >= 0.95)
    report.measure("  each pair (plain / ours), epochs 2..n", " ".join(f"{r:.3f}" for r in pairs))
    report.measure("  mean epoch plain / mean epoch ours", _mean(e["seconds"] for e in plain_epochs)
                   / _mean(e["seconds"] for e in ours_epochs), "x")
    report.measure("throughput ours / plain (training part only; median of pairs)",
                   statistics.median(paired("train_seconds")), "x")
    cpu_ratio = statistics.median(paired("cpu_seconds"))
    report.check("same in CPU seconds per epoch (robust to other load)", cpu_ratio, "x", ">= 0.95x", cpu_ratio >= 0.95)
    ours_batch = statistics.median(b for e in ours_epochs for b in e["train_batches"])
    plain_batch = statistics.median(b for e in plain_epochs for b in e["train_batches"])
    report.measure("median training batch, plain / ours", plain_batch / ours_batch, "x")
    ours_after, plain_after = (statistics.median(_after_validation(e) for e in epochs)
                               for epochs in (ours_epochs, plain_epochs))
    report.measure("after validation (end-of-epoch callbacks), ours / plain",
                   f"{ours_after:.2f} s / {plain_after:.2f} s")
    shares = [[e.get("others_cpu_share") for e in epochs] for epochs in (ours_epochs, plain_epochs)]
    if all(v is not None for side in shares for v in side):
        report.measure("other processes' CPU share per epoch, ours / plain",
                       " / ".join(" ".join(f"{v:.0%}" for v in side) for side in shares))
        if abs(_mean(shares[0]) - _mean(shares[1])) > 0.15:
            report.notes.append("Other processes' load differed by more than 15 points between the two sides' epochs "
                                "even in lockstep: the wall-time ratio is skewed; trust the CPU-seconds ratio.")
    first = ours["epochs"][0]
    report.measure("ours: epoch 1 / epoch 1 without first-batch tracing",
                   f"{first['seconds']:.1f} s / {first_epoch_adjusted(first):.1f} s")
    report.measure("ours: training part, epoch 1 adjusted / median of epochs 2..n",
                   f"{training_part_adjusted(first):.1f} s / {median(ours_epochs, 'train_seconds'):.1f} s")
    report.notes.append(
        "Both sides run at once, each in its own process, in lockstep: they take turns, one epoch each (ours "
        "first), and the side not training waits between epochs; so each pair of epochs sees nearly the same "
        "machine load. Epoch 1 (tracing, decoded-image cache fill) is a warm-up. The target is checked on the "
        "median over epochs 2..n of plain / ours for each pair: a change of load between pairs cancels within "
        "each pair, and one burst inside a pair cannot move the median."
    )
    report.notes.append(
        "Ours runs as the component runs it: a backup directory (BackupAndRestore checkpoint at every epoch end), "
        "NaN guard, CSV history, and a streaming reader; epoch times include those end-of-epoch callbacks ('after "
        "validation'). What follows the last epoch (SavedModel export, cleanup) is skipped: it is in no epoch."
    )
    report.notes.append(
        "'without first-batch tracing' = the epoch minus the excess of its first training and first validation batch "
        "over the median batch. The training part adjusted that way is how benchmark 5 times a single epoch; the "
        "last row compares it with later epochs."
    )
    report.details = {
        "ours": {k: ours[k] for k in ("seconds", "waited_seconds", "peak_rss_mb", "process")},
        "plain": {k: plain[k] for k in ("seconds", "waited_seconds", "peak_rss_mb", "process")},
        "ours_epochs": [_epoch_row(e) for e in ours["epochs"]],
        "plain_epochs": [_epoch_row(e) for e in plain["epochs"]],
        "pair_ratios": pairs, "pair_cpu_ratios": paired("cpu_seconds"),
        "ours_first_epoch_adjusted": first_epoch_adjusted(ours["epochs"][0]),
        "images": counts,
    }


def _after_validation(epoch: dict) -> float:
    """Seconds of an epoch after its last validation batch: end-of-epoch callbacks (checkpoint,
    CSV log) and Keras' own epoch-end work."""
    return epoch["seconds"] - epoch["train_seconds"] - sum(epoch["val_batches"])


@benchmark("memory", "4. Memory: peak RSS of data prep and feature extraction (each its own process)")
def bench_memory(suite: Suite, report: Report) -> None:
    c = suite.config
    size = c["memory_size"]
    prep = suite.prep(size)
    head = suite.head(size)
    estimate = size * c["image_size"] ** 2 * 3 * 4 / 1e6
    prep_peak, head_peak = prep["process"]["peak_rss_mb"], head["head_peak_rss_mb"]
    report.check(f"data prep, sample:{size // 2} ({size} images)", prep_peak, "MB", "<= 2,500 MB",
                 prep_peak <= MEMORY_LIMIT_MB)
    report.check(f"feature extraction over {size} images", head_peak, "MB", "<= 2,500 MB",
                 head_peak <= MEMORY_LIMIT_MB)
    report.measure(f"tutorial's in-memory float cache of {size} images (estimate)", estimate, "MB")
    report.measure("estimate / our feature-extraction peak", estimate / head_peak, "x")
    report.notes.append(
        "Growth per 1k images tells whether data prep holds every image until it writes "
        f"(sample images are 192x192x3 uint8: {192 * 192 * 3 * 1000 / 1e6:.0f} MB per 1k) or streams them "
        "(the resized JPEG bytes a folder source keeps are ~10-20 KB each)."
    )
    baseline = (suite.server_info or {}).get("rss_mb")
    if baseline:
        report.measure(f"sample source: MB per 1k images above the {baseline:,.0f} MB import baseline",
                       (prep_peak - baseline) / size * 1000, "MB")
    folders = []
    for count in c["folder_sizes"]:
        root = suite.path("folder", str(count), "photos")
        suite.child("make_folder", f"make-folder-{count}", root=root, count=count, size=192, seed=c["seed"])
        run = suite.child("prep", f"data-prep-folder-{count}", fresh=True, data=f"folder:{root}",
                          output_dir=suite.path("folder", str(count), "dataset"), image_size=c["image_size"],
                          seed=c["seed"])
        folders.append((count, run["process"]["peak_rss_mb"], run["seconds"]))
        report.measure(f"data prep, folder of {count} JPEG files", run["process"]["peak_rss_mb"], "MB")
        if baseline:
            report.measure("folder source: MB per 1k files above the import baseline",
                           (run["process"]["peak_rss_mb"] - baseline) / count * 1000, "MB")
    if len(folders) >= 2:
        fixed, slope = _linear_fit([(n, peak) for n, peak, _ in folders])
        projected = fixed + slope * size
        report.measure(f"  -> folder source projected to {size} files (linear)", projected, "MB")
        report.notes.append(f"Folder source: {slope * 1000:.1f} MB per 1k files over a {fixed:,.0f} MB base.")
    report.details = {
        "size": size, "prep": {"peak_rss_mb": prep_peak, "seconds": prep["seconds"]},
        "feature_extraction": {"peak_rss_mb": head_peak, "seconds": head["head_seconds"]},
        "tutorial_cache_estimate_mb": estimate, "import_baseline_mb": baseline,
        "folder": [{"files": n, "peak_rss_mb": p, "seconds": s} for n, p, s in folders],
    }


@benchmark("scaling", "5. Scaling: seconds and seconds per 1k images as the data set grows")
def bench_scaling(suite: Suite, report: Report) -> None:
    c = suite.config
    sizes = c["scale_sizes"]
    phases: dict[str, list[tuple[int, float]]] = {"data prep": [], "feature extraction": [], "fine-tuning epoch": []}
    cpu: dict[str, list[tuple[int, float]]] = {"data prep": [], "feature extraction": []}
    # "fine-tuning epoch" = the training part of the first epoch, its first batch at the median batch time
    peaks = {}
    for size in sizes:
        prep, head = suite.prep(size), suite.head(size)
        phases["data prep"].append((size, prep["seconds"]))
        phases["feature extraction"].append((size, head["head_seconds"]))
        cpu["data prep"].append((size, prep["cpu_seconds"]))
        cpu["feature extraction"].append((size, head["head_cpu_seconds"]))
        if head.get("tune_epochs"):
            phases["fine-tuning epoch"].append((size, training_part_adjusted(head["tune_epochs"][0])))
        if not (prep["process"].get("forked") or head["process"].get("forked")):  # fresh processes only
            peaks[size] = {
                "data_prep_mb": prep["process"]["peak_rss_mb"], "feature_extraction_mb": head["head_peak_rss_mb"]
            }
    details = {}
    for phase, points in phases.items():
        if not points:
            continue
        for size, seconds in points:
            report.measure(f"{phase}, {size} images: {seconds:.1f} s", seconds / size * 1000, "s/1k")
        (small, t_small), (large, t_large) = points[0], points[-1]
        ratio = (t_large / large) / (t_small / small)
        report.check(f"{phase}: per-image cost {large} vs {small}", ratio, "x", "<= 1.5x", ratio <= 1.5)
        if phase in cpu:
            (_, c_small), (_, c_large) = cpu[phase][0], cpu[phase][-1]
            report.measure(f"{phase}: same in CPU seconds (robust to other load)",
                           (c_large / large) / (c_small / small), "x")
        fixed, slope = _linear_fit(points)
        report.measure(f"{phase}: linear fit, fixed part / per 1k images", f"{fixed:.1f} s / {slope * 1000:.2f} s")
        details[phase] = {"points": points, "per_image_ratio": ratio, "fit_fixed_s": fixed, "fit_s_per_1k": slope * 1e3}
    for size, peak in peaks.items():
        report.measure(f"peak RSS at {size}: data prep / feature extraction",
                       f"{peak['data_prep_mb']:,.0f} / {peak['feature_extraction_mb']:,.0f} MB")
    report.notes.append(
        "Data sets are sample:N/2 (N images, 80/10/10): feature extraction runs the base over train+val (90%), a "
        "fine-tuning epoch trains on 80% and validates on 10%. Per-image costs fall with N where fixed costs "
        "(model build, tracing, saving) are amortised; the check guards against super-linear growth."
    )
    report.notes.append(
        "Fine-tuning per epoch: the training part of the first epoch (80% of N images) with its first batch "
        "counted at the median batch time (tracing removed); benchmark 3 checks this estimate against later epochs."
    )
    report.details = {"phases": details, "peak_rss": peaks}


@benchmark("orchestration", "6. Orchestration: tlp run through kfp's local runner vs the functions in one process")
def bench_orchestration(suite: Suite, report: Report) -> None:
    c, s = suite.config, suite.config["orchestration_settings"]
    tlp = str(Path(sys.executable).parent / "tlp")
    if c["orchestration"] == "component":  # quick: one component (data-prep) both ways
        steps = ["data-prep"]
        direct = suite.child("direct_pipeline", "orchestration-direct", fresh=True,
                             work_dir=suite.path("orchestration", "direct"), steps=steps,
                             **_direct_settings(s, c["seed"]))
        out = suite.path("orchestration", "tlp")
        shutil.rmtree(out, ignore_errors=True)
        run = suite.spawn([tlp, "component", "data-prep", "--param", f"data={s['data']}",
                           "--param", f"image_size={s['image_size']}", "--output-dir", out], "orchestration-tlp")
        if run["exit_code"] != 0:
            raise ChildFailed(f"tlp component failed (log: {run['log']})\n{_tail(run['log'])}")
        added = run["wall_seconds"] - direct["process"]["wall_seconds"]
        report.measure(f"tlp component data-prep ({s['data']}, {s['image_size']} px): process wall",
                       run["wall_seconds"], "s")
        report.measure("prepare_dataset in a fresh process: process wall", direct["process"]["wall_seconds"], "s")
        report.measure("kfp adds per component (wall difference)", added, "s")
        report.notes.append("Quick mode runs one component (data-prep); full mode runs the whole pipeline.")
        report.details = {"tlp": run, "direct": direct}
        return
    direct = suite.child("direct_pipeline", "orchestration-direct", fresh=True,
                         work_dir=suite.path("orchestration", "direct"), steps=PIPELINE_STEPS,
                         **_direct_settings(s, c["seed"]))
    out = suite.path("orchestration", "tlp")
    shutil.rmtree(out, ignore_errors=True)
    summary_path = os.path.join(out, "summary.json")
    command = [
        tlp, "run", "--data", s["data"], "--weights", s["weights"], "--alpha", str(s["alpha"]),
        "--image-size", str(s["image_size"]), "--epochs", str(s["epochs"]),
        "--fine-tune-epochs", str(s["fine_tune_epochs"]), "--max-gap", str(s["max_gap"]),
        "--min-accuracy", str(s["min_accuracy"]), "--output-dir", out, "--summary-json", summary_path,
    ]
    run = suite.spawn(command, "orchestration-tlp")
    if run["exit_code"] != 0:
        raise ChildFailed(f"tlp run failed (log: {run['log']})\n{_tail(run['log'])}")
    with open(summary_path) as handle:
        kfp_steps = json.load(handle)["steps"]
    direct_steps = direct["steps"]
    common = [step for step in PIPELINE_STEPS if kfp_steps.get(step) is not None and step in direct_steps]
    added = {step: kfp_steps[step] - direct_steps[step] for step in common}
    report.measure("tlp run (kfp local SubprocessRunner): process wall", run["wall_seconds"], "s")
    report.measure("component functions in one process: process wall", direct["process"]["wall_seconds"], "s")
    for step in common:
        report.measure(f"  {step}: kfp {kfp_steps[step]:.1f} s vs direct {direct_steps[step]:.1f} s", added[step], "s")
    per_component = _mean(added.values())
    report.measure(f"kfp adds per component (mean over {len(common)} steps)", per_component, "s")
    wall_added = (run["wall_seconds"] - direct["process"]["wall_seconds"]) / len(common)
    report.measure("kfp adds per component (process wall difference / steps)", wall_added, "s")
    report.measure("tlp outside the steps (wall - sum of step seconds)", run["wall_seconds"] - sum(kfp_steps.values()),
                   "s")
    report.notes.append(
        "Each kfp step is a fresh Python process that imports TensorFlow/kfp/MLflow again and reads and writes "
        "its artifacts; the direct run imports each once. Settings: " + " ".join(f"{k}={v}" for k, v in s.items())
        + " (gate opened so registration runs)."
    )
    report.details = {"kfp_steps": kfp_steps, "direct_steps": direct_steps, "added": added, "tlp": run,
                      "direct_process": direct["process"]}


@benchmark("cut_cache", "7. Fine-tuning from the cut: cached activations vs plain model.fit on images")
def bench_cut_cache(suite: Suite, report: Report) -> None:
    c = suite.config
    data = suite.datasets()
    counts = data["counts"]["fe"]
    weights = suite.weights()
    suite.child(  # benchmark 1's feature-extraction model (the same run when benchmark 1 ran)
        "train_head", "feature-extraction-ours", dataset_dir=data["dirs"]["fe"],
        run_dir=suite.path("runs", "feature-extraction-ours"), alpha=c["alpha"], weights=weights,
        epochs=c["fe_epochs"], batch_size=c["batch_size"], seed=c["seed"],
    )
    model_in = suite.path("runs", "feature-extraction-ours", "model")
    common = {"dataset_dir": data["dirs"]["fe"], "model_in": model_in, "epochs": c["cut_epochs"],
              "batch_size": c["batch_size"], "seed": c["seed"], "fine_tune_at": c["fine_tune_at"],
              "learning_rate": c["learning_rate"]}
    sides = {}
    for name, cut in (("plain", False), ("ours", True)):
        sides[name] = suite.child(
            "fine_tune_phase", f"cut-cache-{name}", run_dir=suite.path("cut-cache", name), cut_cache=cut,
            weights_out=suite.path("cut-cache", f"{name}-weights.npz"), **common)
    plain, ours = sides["plain"], sides["ours"]
    span = f"{counts['train']}+{counts['val']} img, {c['cut_epochs']} ep"
    report.measure(f"plain: fine_tune on images, load to last epoch ({span})", plain["seconds"], "s")
    report.measure(f"ours: fine_tune from the cut, load + cache + epochs ({span})", ours["seconds"], "s")
    speedup = plain["seconds"] / ours["seconds"]
    report.check("speed-up of the fine-tuning phase (plain / ours)", speedup, "x", ">= 1.6x", speedup >= 1.6)
    cpu_speedup = plain["cpu_seconds"] / ours["cpu_seconds"]
    report.check("same in CPU seconds (robust to other load)", cpu_speedup, "x", ">= 1.6x", cpu_speedup >= 1.6)
    report.measure("other processes' CPU share during plain / ours", _others(plain, ours))
    _load_note(report, plain, ours)
    report.measure("ours: before the first epoch (load, unfreeze, build the cache)", ours["setup_seconds"], "s")
    report.measure("plain: before the first epoch (load, unfreeze)", plain["setup_seconds"], "s")
    report.measure("median epoch, plain / ours", f"{statistics.median(e['seconds'] for e in plain['epochs']):.1f} s / "
                   f"{statistics.median(e['seconds'] for e in ours['epochs']):.1f} s")
    report.measure("final val accuracy: plain", plain["val_accuracy"])
    report.measure("final val accuracy: ours", ours["val_accuracy"])
    gap = abs(plain["val_accuracy"] - ours["val_accuracy"]) * 100
    report.check("val accuracy difference", gap, "pts", "<= 0.5 pts", gap <= 0.5)
    difference = suite.child("weights_difference", "cut-cache-weights", model_in=model_in,
                             first=suite.path("cut-cache", "ours-weights.npz"),
                             second=suite.path("cut-cache", "plain-weights.npz"))
    report.measure("final weights: max |ours - plain| / max change by training",
                   f"{difference['max_abs_difference']:.2e} / {difference['max_abs_moved']:.2e}")
    report.measure("final weights: worst tensor's |ours - plain| / |its change| (L2)",
                   difference["max_relative_difference"])
    size = c["memory_size"]
    suite.prep(size)
    suite.head(size)
    big = suite.child(
        "fine_tune_phase", f"cut-cache-{size}", fresh=True, run_dir=suite.path("cut-cache", str(size)), cut_cache=True,
        **{**common, "dataset_dir": suite.path("scale", str(size), "dataset"),
           "model_in": suite.path("scale", str(size), "runs", "head"), "epochs": 1})
    peak = big["process"]["peak_rss_mb"]
    report.check(f"peak RSS, fine-tuning from the cut over {size} images (1 epoch)", peak, "MB", "<= 2,500 MB",
                 peak <= MEMORY_LIMIT_MB)
    report.measure(f"  {size} images: load + cache build / first epoch",
                   f"{big['setup_seconds']:.1f} s / {big['epochs'][0]['seconds']:.1f} s")
    report.notes.append(
        "Both sides call training.fine_tune as the fine-tuning component does (backup directory with per-epoch "
        "checkpoints, NaN guard, CSV history), from benchmark 1's feature-extraction model, each in a process of its "
        "own, one after the other: plain with cut_cache=False (model.fit on the images: decoded-image cache, "
        "streaming reader), ours with the default cut cache. Timed from the call to the end of the last epoch; the "
        "SavedModel export that follows is the same for both and is replaced by saving the weights for the "
        "comparison. The cut cache keeps up to 1 GiB of activations in memory and spills the rest to local disk."
    )
    report.notes.append(
        "The head has Dropout(0.2) (the default): its random masks may differ between the two sides, so the "
        "weights are compared as a measurement; tests/unit/test_cut_cache.py checks them within 1e-6 on a "
        "dropout-free head (bit-identical there)."
    )
    report.details = {
        "plain": {k: plain[k] for k in ("seconds", "cpu_seconds", "setup_seconds", "epochs", "history", "peak_rss_mb",
                                        "process")},
        "ours": {k: ours[k] for k in ("seconds", "cpu_seconds", "setup_seconds", "epochs", "history", "peak_rss_mb",
                                      "process")},
        "weights": {k: v for k, v in difference.items() if k != "process"},
        "memory_run": {k: big[k] for k in ("seconds", "setup_seconds", "epochs", "peak_rss_mb", "process")},
        "images": counts, "epochs": c["cut_epochs"],
    }


@benchmark("parallel_prep", "8. Data prep on every core: JPEG photos of mixed sizes, all cores vs one")
def bench_parallel_prep(suite: Suite, report: Report) -> None:
    c = suite.config
    count = c["photos"]
    root = suite.path("photos", str(count))
    photos = suite.child("make_photos", f"make-photos-{count}", root=root, count=count, seed=c["seed"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    sides = {}
    # The same runner (Beam's DirectRunner, multi-processing) with one worker pinned to one core
    # vs one worker per core; and the in-memory runner on one core, the one-process baseline.
    for name, processes, one_core in (("one", 1, True), ("all", cores, False), ("in-process", 0, True)):
        sides[name] = suite.child("prep", f"data-prep-photos-{name}", data=f"folder:{root}",
                                  output_dir=suite.path("photos", f"dataset-{name}"), image_size=c["image_size"],
                                  seed=c["seed"], processes=processes, one_core=one_core)
    one, every, alone = sides["one"], sides["all"], sides["in-process"]
    described = (f"{count:,} photos, {photos['megapixels_mean']:.1f} MP mean, up to {photos['megapixels_max']:.1f} MP, "
                 f"{photos['mb_total'] / count * 1000:.0f} KB mean")
    report.measure(f"photos: {described}", photos["mb_total"], "MB")
    report.measure("one core, 1 Beam worker: prepare_dataset", one["seconds"], "s")
    report.measure(f"all {cores} cores, {cores} Beam workers: prepare_dataset (worker start-up included)",
                   every["seconds"], "s")
    report.measure("one core, in this process (Beam's in-memory runner)", alone["seconds"], "s")
    speedup = one["seconds"] / every["seconds"]
    report.check(f"speed-up on {cores} cores (one / all)", speedup, "x", ">= 1.6x", speedup >= 1.6)
    report.measure(f"speed-up on {cores} cores vs in-process on one core", alone["seconds"] / every["seconds"], "x")
    report.measure(f"efficiency: speed-up / {cores} cores (1.0 = ideal)", speedup / cores)
    report.measure("photos per second, one / all", f"{count / one['seconds']:.0f} / {count / every['seconds']:.0f}")
    report.measure("CPU seconds, one / all (workers included)",
                   f"{one['cpu_seconds']:.1f} / {every['cpu_seconds']:.1f}")
    report.measure("other processes' CPU share during one / all", _others(one, every))
    _load_note(report, one, every)
    same = one["fingerprint"] == every["fingerprint"] and one["files"] == every["files"]
    report.check("same images and shards (fingerprint, files per split)", "same" if same else "DIFFERENT", "",
                 "same", same)
    report.measure("peak RSS: writer process / largest worker", f"{every['peak_rss_mb']:,.0f} / "
                   f"{every['workers_peak_rss_mb']:,.0f} MB")
    report.notes.append(
        "Every side runs prepare_dataset, data prep's Beam pipeline, on the same folder, each in a process of its "
        "own: read, SHA-256, decode (JPEGs at reduced scale, Pillow), resize, encode, deduplicate, split, write "
        "TFRecord shards. 'one' and 'all' run Beam's DirectRunner in multi-processing mode with 1 worker pinned "
        "to one core vs one worker per core (worker start-up counted); 'in-process' its in-memory runner on one "
        "core. tests/unit/test_parallel_prep.py checks the shards are byte-identical whatever the runner. Photos "
        "are generated once per invocation (not timed)."
    )
    report.details = {"photos": {k: v for k, v in photos.items() if k != "process"}, "cores": cores,
                      "one": {k: v for k, v in one.items()}, "all": {k: v for k, v in every.items()}}


@benchmark("prep_memory", "8b. Data prep's memory, tlp 0.1.0's process pool vs Beam: process tree, fresh processes")
def bench_prep_memory(suite: Suite, report: Report) -> None:
    from bench import prep_memory

    c = suite.config
    count = c["photos"]
    root = suite.path("photos", str(count))
    if not os.path.isdir(os.path.join(root, "squares")):
        suite.child("make_photos", f"make-photos-{count}", root=root, count=count, seed=c["seed"])
    result = prep_memory.measure(root, Path(suite.path("prep-memory")), c["image_size"], c["seed"])
    before, after = result["median"]["before"], result["median"]["after"]
    report.measure(f"before ({prep_memory.BEFORE_BEAM}, images._Pool): process tree peak RSS / largest process",
                   f"{before['tree_peak_rss_mb']:,.0f} / {before['largest_process_peak_rss_mb']:,.0f} MB")
    report.measure("after (Beam DirectRunner): process tree peak RSS / largest process",
                   f"{after['tree_peak_rss_mb']:,.0f} / {after['largest_process_peak_rss_mb']:,.0f} MB")
    report.check("process tree peak RSS, after / before", after["tree_peak_rss_mb"] / before["tree_peak_rss_mb"],
                 "x", "<= 1.0x", after["tree_peak_rss_mb"] <= before["tree_peak_rss_mb"])
    report.measure("wall seconds, before / after (fresh process, start-up included)",
                   f"{before['wall_seconds']:.1f} / {after['wall_seconds']:.1f}")
    report.check("same counts per split and class", "same" if result["same_counts"] else "DIFFERENT", "", "same",
                 result["same_counts"])
    report.notes.append(
        f"Each side runs data prep with its defaults on the same {count:,} photos in a fresh Python process (not "
        "forked from one with TensorFlow loaded); the before side is tlp's code at "
        f"{prep_memory.BEFORE_BEAM} installed from git into a folder of its own. Memory is the sum of the resident "
        "sets of the step's process and every process it started, sampled every 50 ms (bench/prep_memory.py)."
    )
    report.details = result


@benchmark("listing", "8c. Listing a bucket by class prefix: 8 prefixes at once vs one after another, stand-in")
def bench_listing(suite: Suite, report: Report) -> None:
    from bench import listing

    result = listing.measure(classes=8, per_class=3000, page_seconds=0.1)
    report.measure("one prefix after another / 8 at once (median of 3)",
                   f"{result['sequential']['seconds']:.2f} / {result['parallel']['seconds']:.2f} s")
    report.measure("listing pages, each side", f"{result['parallel']['pages']}")
    report.check("speedup, 8 class prefixes", result["speedup"], "x", ">= 4x", result["speedup"] >= 4)
    report.notes.append("The same list_bucket with 1 thread and with 8, against the storage stand-in in a process of "
                        "its own with 0.1 s per listing page (bench/listing.py).")
    report.details = result


@benchmark("multi_worker", "10. Input across workers: MultiWorkerMirroredStrategy, 2 local workers, FILE sharding")
def bench_multi_worker(suite: Suite, report: Report) -> None:
    c, w = suite.config, suite.config["multi_worker"]
    dataset = suite.path("multi-worker", "dataset")
    suite.child("prep", "multi-worker-data-prep", data=f"sample:{w['per_class']}", output_dir=dataset,
                image_size=w["image_size"], seed=w["seed"])
    suite.child("train_head", "multi-worker-head", dataset_dir=dataset, run_dir=suite.path("multi-worker", "head"),
                alpha=w["alpha"], weights="none", epochs=1, batch_size=c["batch_size"], seed=c["seed"],
                dropout=0.0)  # dropout masks would differ between replicas and hide the equivalence
    common = {"dataset_dir": dataset, "model_in": suite.path("multi-worker", "head", "model"), "epochs": w["epochs"],
              "seed": c["seed"], "fine_tune_at": c["fine_tune_at"], "learning_rate": c["learning_rate"],
              "cut_cache": True, "count_records": True}
    # One step per epoch over the whole training split (global batch = its size): each step's
    # gradient is then over the same images however the workers split them, so results must match.
    single = suite.child("fine_tune_phase", "multi-worker-one", run_dir=suite.path("multi-worker", "one"),
                         batch_size=w["train"], devices="cpu:1",
                         weights_out=suite.path("multi-worker", "one-weights.npz"), **common)
    cluster = {"chief": [f"127.0.0.1:{_free_port()}"], "worker": [f"127.0.0.1:{_free_port()}"]}
    jobs = []
    for index, task in enumerate(({"type": "chief", "index": 0}, {"type": "worker", "index": 0})):
        weights_out = suite.path("multi-worker", "two-weights.npz") if index == 0 else None
        jobs.append(("fine_tune_phase", f"multi-worker-{task['type']}", {
            **common, "run_dir": suite.path("multi-worker", "two"), "batch_size": w["train"] // 2,  # one backup dir
            "tf_config": {"cluster": cluster, "task": task}, "weights_out": weights_out}))
    chief, worker = suite.together(jobs)
    everything = single["records"]
    files = {split: len(names) for split, names in _metadata(dataset)["files"].items()}
    report.measure("data set: train / val images, shard files", f"{w['train']} / {w['val']} images, "
                   f"{files['train']} / {files['val']} files")
    report.measure("one worker: records read (train + val)", f"{len(everything)}")
    file_policy = all("AutoShardPolicy.FILE" in Path(run["process"]["log"]).read_text() for run in (chief, worker))
    report.check("both workers shard by file (AutoShardPolicy.FILE)", "yes" if file_policy else "no", "", "yes",
                 file_policy)
    halves = (len(chief["records"]) == len(worker["records"]) == len(everything) // 2
              and sorted(chief["records"] + worker["records"]) == sorted(everything))
    report.check("records read by chief / worker (together: every record once)",
                 f"{len(chief['records'])} / {len(worker['records'])}", "", f"{len(everything) // 2} each",
                 halves)
    difference = suite.child("weights_difference", "multi-worker-weights", model_in=common["model_in"],
                             first=suite.path("multi-worker", "two-weights.npz"),
                             second=suite.path("multi-worker", "one-weights.npz"))
    report.check("final weights: max |2 workers - 1 worker| (max change by training)",
                 f"{difference['max_abs_difference']:.1e} ({difference['max_abs_moved']:.1e})", "", "<= 1e-6",
                 difference["max_abs_difference"] <= 1e-6)
    report.measure("fine-tuning phase: 1 worker / 2 workers (wall)", f"{single['seconds']:.1f} s / "
                   f"{max(chief['seconds'], worker['seconds']):.1f} s")
    report.notes.append(
        "Both workers run on this one 2-core machine, so there is no speed-up to expect: the benchmark shows that "
        "each worker reads only its own files (a counter on every TFRecord record read, as in "
        "tests/faults/test_cut_cache_distributed.py) and that the result equals one worker's. The seed is one "
        "whose content split gives exactly 80/10/10, so the shards divide evenly between the workers."
    )
    report.details = {"files": files, "single": {k: v for k, v in single.items() if k != "records"},
                      "chief": {k: v for k, v in chief.items() if k != "records"},
                      "worker": {k: v for k, v in worker.items() if k != "records"}, "weights": difference}


def _metadata(dataset: str) -> dict:
    # Not images.read_metadata: this process stays free of TensorFlow (its children import it).
    return json.loads(Path(dataset, "metadata.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _epoch_row(epoch: dict) -> dict:
    return {k: v for k, v in epoch.items() if "_batches" not in k}


def _load_note(report: Report, *runs: dict) -> None:
    shares = [run["process"].get("others_cpu_share") for run in runs]
    if None not in shares and max(shares) - min(shares) > 0.15:
        report.notes.append(
            f"Other processes used {' vs '.join(f'{s:.0%}' for s in shares)} of the CPUs while the two sides ran: "
            "the wall-time ratio is skewed by that difference; the CPU-seconds ratio is the one to trust in this run."
        )


def _others(*runs: dict) -> str:
    """How much of the machine other processes used while each run's process ran."""
    return " / ".join(f"{run['process'].get('others_cpu_share', float('nan')):.0%}" for run in runs)


def _direct_settings(s: dict, seed: int) -> dict:
    return {"data": s["data"], "alpha": s["alpha"], "weights": s["weights"], "image_size": s["image_size"],
            "epochs": s["epochs"], "fine_tune_epochs": s["fine_tune_epochs"], "max_gap": s["max_gap"],
            "min_accuracy": s["min_accuracy"], "seed": seed}


@benchmark("serving", "9. Serving: tlp serve over HTTP vs the SavedModel called in-process (bench/serving.py)")
def bench_serving(suite: Suite, report: Report) -> None:
    from bench import serving

    serving.fill_report(report, serving.run(suite.mode, suite.path("serving")))


@benchmark("serving_cold_start", "9b. Serving image: size, and docker run to healthy with a mounted model")
def bench_serving_cold_start(suite: Suite, report: Report) -> None:
    from bench import serving
    from tlp.components.lib.version import project_version

    image = os.environ.get("TLP_SERVE_IMAGE", f"tlp/tlp-serve:{project_version()}")
    inspected = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True)
    if inspected.returncode != 0:
        raise ChildFailed(f"the serving image {image} is not built here (make images-offline, or TLP_SERVE_IMAGE="
                          f"REPO/tlp-serve:TAG): {inspected.stderr.strip()[:200]}")
    work = suite.path("serving-cold-start")
    os.makedirs(work, exist_ok=True)
    built = serving._run_child("build", work) if not os.path.isdir(os.path.join(work, "model")) else {
        "model_dir": os.path.join(work, "model")}
    result = serving.run_cold_start(image, built["model_dir"], serving.MODES[suite.mode]["cold_starts"])
    for label, value, unit, target, passed in serving.cold_start_rows(result):
        report.check(label, value, unit, target, passed)
    report.notes.append("Each run a new container of the serving image (entry point tlp-serve) with the full-size "
                        "model (MobileNetV2 alpha 1.0, 160 px, with its drift reference) mounted read-only; the time "
                        "runs from docker run to the first 200 of /v2/health/ready, polled every 20 ms.")
    report.details = result


# Benchmark 11: a 4-trial tuned run (2 cuts x 2 learning rates) against one run of the same settings.
TUNING_BENCH = {
    "quick": {"data": "sample:20", "image_size": 64, "alpha": 0.35, "epochs": 2, "fine_tune_epochs": 1},
    "full": {"data": "sample:300", "image_size": 96, "alpha": 0.35, "epochs": 5, "fine_tune_epochs": 3},
    "grid": "fine_tune_at=60,100 learning_rate=1e-4,3e-5",
    "target": 2.6,
}


@benchmark("tuning", "11. Tuning in one run: 4 trials (2 cuts x 2 learning rates) vs one run, end to end")
def bench_tuning(suite: Suite, report: Report) -> None:
    s, tlp = TUNING_BENCH[suite.mode], str(Path(sys.executable).parent / "tlp")
    common = [
        "--data", s["data"], "--weights", "none", "--alpha", str(s["alpha"]), "--image-size", str(s["image_size"]),
        "--epochs", str(s["epochs"]), "--fine-tune-epochs", str(s["fine_tune_epochs"]), "--max-gap", "1",
        "--min-accuracy", "0", "--fine-tune-at", "100", "--learning-rate", "1e-4",
    ]
    runs = {}
    for label, extra in (("single", []), ("tuned", ["--tune", TUNING_BENCH["grid"]])):
        out = suite.path("tuning", label)
        shutil.rmtree(out, ignore_errors=True)
        summary_path = os.path.join(out, "summary.json")
        run = suite.spawn([tlp, "run", *common, *extra, "--output-dir", out, "--summary-json", summary_path],
                          f"tuning-{label}")
        if run["exit_code"] != 0:
            raise ChildFailed(f"tlp run {label} failed (log: {run['log']})\n{_tail(run['log'])}")
        with open(summary_path) as handle:
            run["summary_steps"] = json.load(handle)["steps"]
        runs[label] = run
    ratio = runs["tuned"]["wall_seconds"] / runs["single"]["wall_seconds"]
    report.measure("one run (fine_tune_at 100, lr 1e-4): process wall", runs["single"]["wall_seconds"], "s")
    report.measure(f"tuned run --tune \"{TUNING_BENCH['grid']}\": process wall", runs["tuned"]["wall_seconds"], "s")
    report.check("tuned / one run", ratio, "x", f"<= {TUNING_BENCH['target']}", ratio <= TUNING_BENCH["target"])
    report.notes.append(
        "Shared by the trials: data fingerprint, prep and checks once, feature extraction once (no head option "
        "tuned), evaluation and registration once for the best; each trial fine-tunes from its own cut cache. "
        "Settings: " + " ".join(common) + ". Four separate runs would cost about 4x."
    )
    report.details = {label: {"wall_seconds": run["wall_seconds"], "steps": run["summary_steps"]}
                      for label, run in runs.items()}


# Benchmark 12: the whole pipeline at growing sizes. Run only when named (--only scale): the
# 100,000-photo run alone takes hours on 2 cores.
SCALE = {
    "full": [2000, 20000, 100000],
    "quick": [200, 1000],
    "settings": ["--weights", "none", "--alpha", "0.35", "--image-size", "64", "--epochs", "1",
                 "--fine-tune-epochs", "1", "--max-gap", "1", "--min-accuracy", "0"],
}
OPT_IN = ("scale",)


@benchmark("scale", "12. Scale: the whole pipeline (tlp run) on generated photos, each step's seconds and memory")
def bench_scale(suite: Suite, report: Report) -> None:
    from bench import scale

    sizes = sorted(suite.scale_sizes or SCALE[suite.mode])
    if len(sizes) < 2:
        raise ValueError(f"--scale-sizes needs at least two sizes to compare, got {sizes}.")
    seed, tlp = suite.config["seed"], str(Path(sys.executable).parent / "tlp")
    pool = suite.photo_pool()
    print(f"    photo pool {pool}: {max(sizes):,} photos needed", flush=True)
    made = scale.ensure_photos(pool, max(sizes), seed)
    report.measure(f"photos in the pool ({pool}): made / mean megapixels / mean KB",
                   f"{made['count']:,} / {made['pixels'] / made['count'] / 1e6:.2f} / "
                   f"{made['bytes'] / made['count'] / 1e3:.0f}")
    runs: dict[int, dict] = {}
    for size in sizes:
        folder = scale.link_folder(pool, suite.path("scale", str(size), "photos"), size)
        out = suite.path("scale", str(size), "run")
        shutil.rmtree(out, ignore_errors=True)
        summary_path = os.path.join(out, "summary.json")
        label = f"scale-{size}"
        print(f"    {label}: tlp run on {size:,} photos ...", flush=True)
        machine = machine_cpu()
        run = scale.run_measured([tlp, "run", "--data", f"folder:{folder}", *SCALE["settings"], "--output-dir", out,
                                  "--summary-json", summary_path], str(suite.logs / f"{label}.log"), suite.env,
                                 str(REPO))
        if run["exit_code"] != 0:
            raise ChildFailed(f"tlp run on {size:,} photos failed (log: {suite.logs / label}.log)\n"
                              f"{_tail(str(suite.logs / f'{label}.log'))}")
        with open(summary_path) as handle:
            run["summary_steps"] = json.load(handle)["steps"]
        steps = run["steps"]
        suite._finish({"label": label, "wall_seconds": run["wall_seconds"], "exit_code": 0, "timed_out": False,
                       "log": str(suite.logs / f"{label}.log"),
                       "cpu_seconds": round(sum(u["cpu_seconds"] for u in steps.values()), 1),
                       "peak_rss_mb": max(u["peak_rss_mb"] for u in steps.values())}, machine)
        run["others_cpu_share"] = suite.children[-1].get("others_cpu_share")
        runs[size] = run
        with open(suite.path("scale", str(size), "measured.json"), "w") as handle:
            json.dump(run, handle, indent=2)  # kept even if a larger size fails
        report.details = {"sizes": sizes, "pool": made, "runs": runs}
    _scale_rows(report, runs)


def _scale_rows(report: Report, runs: dict[int, dict]) -> None:
    """Benchmark 12's table: each step's seconds per 1k photos and peak memory at every size, and
    the two checks per step (per-photo cost flat or falling; memory growth per photo)."""
    from bench import scale

    sizes = sorted(runs)
    steps = [step for step in PIPELINE_STEPS if all(runs[n]["summary_steps"].get(step) is not None for n in sizes)]
    report.published = scale_figures(runs, steps)
    for size in sizes:
        run = runs[size]
        report.measure(f"{size:,} photos: tlp run wall (others used {run['others_cpu_share'] or 0:.0%} of the CPUs)",
                       run["wall_seconds"], "s")
        for step in steps:
            seconds, usage = run["summary_steps"][step], run["steps"].get(step, {})
            report.measure(f"  {step}: {seconds:.1f} s, {usage.get('cpu_seconds', 0):.0f} CPU s, "
                           f"peak {usage.get('peak_rss_mb', 0):,.0f} MB", seconds / size * 1000, "s/1k")
    (small, large) = sizes[0], sizes[-1]
    for step in steps:
        wall = scale.per_photo_ratio([(n, runs[n]["summary_steps"][step]) for n in sizes])
        cpu = scale.per_photo_ratio([(n, max(runs[n]["steps"].get(step, {}).get("cpu_seconds", 0.0), 1e-3))
                                     for n in sizes])
        report.check(f"{step}: per-photo seconds {large:,} vs {small:,} (CPU: {cpu:.2f}x)", wall, "x",
                     f"<= {scale.PER_PHOTO_TARGET}x", wall <= scale.PER_PHOTO_TARGET)
    for step in [*steps, scale.ORCHESTRATOR]:
        if not all(step in runs[n]["steps"] for n in sizes):
            continue
        growth, (n_a, n_b) = scale.worst_growth_kb([(n, runs[n]["steps"][step]["peak_rss_mb"]) for n in sizes])
        report.check(f"{step}: peak memory growth per photo ({n_a:,} -> {n_b:,})", growth, "KB/photo",
                     f"<= {scale.GROWTH_TARGET_KB:g} KB", growth <= scale.GROWTH_TARGET_KB)
    total = scale.per_photo_ratio([(n, runs[n]["wall_seconds"]) for n in sizes])
    report.check(f"whole run: per-photo seconds {large:,} vs {small:,}", total, "x", f"<= {scale.PER_PHOTO_TARGET}x",
                 total <= scale.PER_PHOTO_TARGET)
    if large < 100000:
        estimate = scale.estimate_seconds([(n, runs[n]["wall_seconds"]) for n in sizes], 100000)
        report.measure("whole run at 100,000 photos, linear fit of these sizes (estimate)", estimate, "s")
    report.notes.append(
        "tlp run --data folder:PHOTOS " + " ".join(SCALE["settings"]) + ". Step seconds are the run summary's; "
        "CPU seconds and peak memory are the step's process tree's (the step process, kfp's sh wrapper and every "
        "process it starts, Beam workers included), sampled every 0.1 s with psutil (bench/scale.py). "
        "'orchestrator' is the tlp run process itself. Photos: distinct generated JPEGs of 0.3-1.9 megapixels, "
        "made once into a pool and hard-linked into each size's folder."
    )


def scale_figures(runs: dict[int, dict], steps: list[str]) -> dict:
    """What the docs take from benchmark 12 (the cost plan's per-photo figures): per size, the
    whole run and each step's seconds (the run summary's), CPU seconds and peak MB of its process
    tree, and both per photo."""
    sizes = []
    for size in sorted(runs):
        run = runs[size]
        per_step = {}
        for step in steps:
            seconds, usage = run["summary_steps"][step], run["steps"].get(step, {})
            cpu = usage.get("cpu_seconds")
            per_step[step] = {
                "seconds": _round(float(seconds)), "cpu_seconds": _round(cpu), "peak_mb": usage.get("peak_rss_mb"),
                "seconds_per_photo": _round(seconds / size),
                "cpu_seconds_per_photo": None if cpu is None else _round(cpu / size),
            }
        sizes.append({"photos": size, "wall_seconds": run["wall_seconds"],
                      "others_cpu_share": run.get("others_cpu_share"), "steps": per_step})
    return {"settings": " ".join(SCALE["settings"]), "sizes": sizes}


@benchmark("litert", "13. On the device: LiteRT variants' size and single-image latency vs Keras (bench/litert.py)")
def bench_litert(suite: Suite, report: Report) -> None:
    from bench import litert as litert_bench

    c = suite.config
    data = suite.datasets()["dirs"]["fe"]
    suite.child("train_head", "litert-head", dataset_dir=data, run_dir=suite.path("litert", "head"),
                alpha=c["alpha"], weights=suite.weights(), epochs=1, batch_size=c["batch_size"], seed=c["seed"])
    result = suite.path("litert", "measured.json")
    run = suite.spawn([sys.executable, "-m", "bench.litert", "--model", suite.path("litert", "head", "model"),
                       "--dataset", data, "--output", suite.path("litert", "variants"), "--result", result], "litert")
    if run["exit_code"] != 0:
        raise ChildFailed(f"bench.litert failed (log: {run['log']})\n{_tail(run['log'])}")
    with open(result) as handle:
        litert_bench.fill_report(report, json.load(handle))
    weights = _weights_label(c["weights"])
    report.notes.append(f"MobileNetV2 alpha {c['alpha']}, {c['image_size']} px, {weights} weights; "
                        "the head trained one epoch on benchmark 1's data set; latency on this machine's CPU.")


# --- output -----------------------------------------------------------------------------------


def format_table(reports: list[Report], mode: str, wall: float, budget: float) -> str:
    widths = (20, 62, 22, 10)
    header = f"{'benchmark':<{widths[0]}} {'measurement':<{widths[1]}} {'value':>{widths[2]}} " \
             f"{'target':>{widths[3]}}  result"
    lines = ["", f"tlp benchmark suite ({mode}): {wall:.0f} s (budget {budget:.0f} s)", header, "-" * len(header)]
    for report in reports:
        name = report.name
        if report.status != "ok":
            lines.append(f"{name:<{widths[0]}} {'ERROR: ' + (report.error or '').splitlines()[0]}")
            name = ""
        for row in report.rows:
            label = row["label"][: widths[1]]
            result = "" if row["passed"] is None else ("PASS" if row["passed"] else "FAIL")
            lines.append(f"{name:<{widths[0]}} {label:<{widths[1]}} {_fmt(row['value'], row['unit']):>{widths[2]}} "
                         f"{row['target'] or '':>{widths[3]}}  {result}")
            name = ""
        lines.append("")
    checks = [row for r in reports for row in r.rows if row["passed"] is not None]
    passed = sum(1 for row in checks if row["passed"])
    errors = [r.name for r in reports if r.status != "ok"]
    could_not_run = f"; benchmarks that could not run: {errors}" if errors else ""
    lines.append(f"targets met: {passed}/{len(checks)}{could_not_run}")
    return "\n".join(lines)


def host_info() -> dict:
    versions = {}
    for package in ("tensorflow", "tf-keras", "kfp", "mlflow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "platform": platform.platform(), "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "versions": versions,
    }


def code_version() -> str | None:
    """The commit the benchmark code ran at (``-dirty`` with uncommitted changes), or None outside git."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=10"], cwd=REPO,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def reproduce_command(name: str, mode: str, weights: str, scale_sizes: list[int] | None) -> str:
    """The command that runs this one benchmark again with the same settings and publishes it."""
    words = ["python -m bench.run", *(["--quick"] if mode == "quick" else []), "--only", name]
    if weights != "calibrated":
        words += ["--weights", weights]
    if name == "scale" and scale_sizes:
        words += ["--scale-sizes", *map(str, scale_sizes)]
    return " ".join([*words, "--publish"])


def published_entry(report: Report, document: dict, window: dict) -> dict:
    """One benchmark's results file for the docs (docs/data/bench-NAME.json): when, on what machine
    under what load, with which command and code, and each row as measurement, value, unit,
    target, pass. ``window``: this benchmark's start and end time and load, and the children it ran."""
    host = document["host"]
    shares = [child["others_cpu_share"] for child in window["children"] if "others_cpu_share" in child]
    return {
        "benchmark": report.name, "title": report.title, "mode": document["mode"],
        "date": window["ended_at"], "started_at": window["started_at"], "seconds": round(report.seconds, 1),
        "command": document["command"], "reproduce": window["reproduce"], "code": document.get("code"),
        "host": {
            "cpus": host["cpus"], "machine": host["machine"], "platform": host["platform"], "python": host["python"],
            "versions": host["versions"], "load_average_at_start": window["load_at_start"],
            "load_average_at_end": window["load_at_end"],
            "others_cpu_share": [min(shares), max(shares)] if shares else None,
        },
        "model": document["model"],
        "rows": [{"measurement": row["label"], "value": row["value"], "unit": row["unit"], "target": row["target"],
                  "pass": row["passed"]} for row in report.rows],
        "notes": report.notes,
        "data": report.published,
    }


def publish(entry: dict, directory: Path) -> str | None:
    """Writes ``entry`` to DIRECTORY/bench-NAME.json; returns the path, or None when it is a quick
    run's and a full-size result is already there (a smoke test never replaces a measurement)."""
    path = Path(directory) / f"bench-{entry['benchmark']}.json"
    if entry["mode"] == "quick" and path.exists():
        try:
            if json.loads(path.read_text()).get("mode") == "full":
                return None
        except ValueError:
            pass  # an unreadable file is replaced
    write_results(str(path), entry)
    return str(path)


def publish_results_file(path: str, directory: Path) -> list[str]:
    """Publishes the benchmarks of a results file written without ``--publish`` (``--publish-from``):
    each benchmark that ran, with the run's date, host, load and command (a benchmark's own start
    and end are not in such a file: the run's are given). Returns the files written."""
    with open(path) as handle:
        document = json.load(handle)
    written = []
    for name, bench in document.get("benchmarks", {}).items():
        if bench.get("status") != "ok":
            print(f"not published: {name} could not run ({bench.get('error')})")
            continue
        report = Report(name, bench["title"], rows=bench["rows"], notes=bench["notes"], seconds=bench["seconds"])
        if name == "scale":
            runs = {int(size): run for size, run in bench["details"]["runs"].items()}
            steps = [step for step in PIPELINE_STEPS
                     if all(run["summary_steps"].get(step) is not None for run in runs.values())]
            report.published = scale_figures(runs, steps)
        sizes = bench.get("details", {}).get("sizes") if name == "scale" else None
        window = {"started_at": document["started_at"], "ended_at": document["started_at"],
                  "load_at_start": document["host"]["load_average_at_start"],
                  "load_at_end": document.get("load_average_at_end"), "children": document.get("children", []),
                  "reproduce": reproduce_command(name, document["mode"], document["config"]["weights"], sizes)}
        target = publish(published_entry(report, document, window), directory)
        print(f"published to {target}" if target else f"not published: {name}: a full-size result is there")
        written += [target] if target else []
    return written


def write_results(path: str, document: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        json.dump(document, handle, indent=2, default=str)
    os.replace(path + ".tmp", path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _run_all(suite: Suite, selected: list[str], reports: list, document: dict, started: float, output: str,
             publish_dir: Path | None = None) -> None:
    for name in selected:
        title, func = BENCHMARKS[name]
        report = Report(name, title)
        print(f"\n== {title}", flush=True)
        bench_start, children_before = time.monotonic(), len(suite.children)
        window = {"started_at": _now(), "load_at_start": [round(v, 2) for v in os.getloadavg()],
                  "reproduce": reproduce_command(name, suite.mode, suite.config["weights"], suite.scale_sizes)}
        try:
            func(suite, report)
        except Exception as error:  # one failed benchmark must not hide the others' results
            report.status, report.error = "error", f"{type(error).__name__}: {error}"
            print(f"   ERROR {report.error}", flush=True)
        report.seconds = time.monotonic() - bench_start
        reports.append(report)
        document["benchmarks"][name] = report.to_json()
        document["wall_seconds"] = round(time.monotonic() - started, 1)
        write_results(output, document)
        if publish_dir is None:
            continue
        if report.status != "ok":
            print(f"   not published: {name} could not run (a committed result stays as it was)", flush=True)
            continue
        window.update(ended_at=_now(), load_at_end=[round(v, 2) for v in os.getloadavg()],
                      children=suite.children[children_before:])
        path = publish(published_entry(report, document, window), publish_dir)
        print(f"   published to {path}" if path else
              f"   not published: docs/data/bench-{name}.json holds a full-size result; a quick run does not "
              "replace it", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="tlp benchmark suite (bench/README.md)")
    parser.add_argument("--quick", action="store_true", help="small sizes: about 3 minutes instead of about 18")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only these benchmarks: {', '.join(BENCHMARKS)}")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="results JSON (default bench/results.json)")
    parser.add_argument("--weights", default="calibrated",
                        help="base weights for both sides: calibrated (default: random weights with BatchNorm "
                             "statistics set from the training images so features have a trained network's scale; "
                             "made once, timed by no benchmark), calibrated-channels (per-channel variant), none "
                             "(uncalibrated random), imagenet (if cached or reachable), or a .h5 file of the base "
                             "without its top")
    parser.add_argument("--spawn", action="store_true",
                        help="start every child as a fresh interpreter instead of forking it from the preloaded "
                             "fork server (about 6 s more per child; the measurements mean the same)")
    parser.add_argument("--workdir", default=None,
                        help="keep generated data, outputs and child logs here (default: a temporary directory, "
                             "removed at the end unless a benchmark failed)")
    parser.add_argument("--publish", nargs="?", const=str(PUBLISH_DIR), default=None, metavar="DIR",
                        help="also write each benchmark's results, as it ends, to DIR/bench-NAME.json (default DIR "
                             "docs/data: the docs site's Benchmarks page is generated from them); a quick run does "
                             "not replace a full-size result")
    parser.add_argument("--publish-from", metavar="RESULTS", default=None,
                        help="run nothing: publish the benchmarks of a results file written without --publish "
                             "(dated with that run's start) to --publish's DIR (default docs/data)")
    parser.add_argument("--scale-sizes", nargs="+", type=int, metavar="N",
                        help=f"photo counts of benchmark 12 (scale; default {SCALE['full']}, quick {SCALE['quick']})")
    args = parser.parse_args(argv)
    if args.publish_from:
        publish_results_file(args.publish_from, Path(args.publish or PUBLISH_DIR))
        return 0
    mode = "quick" if args.quick else "full"
    selected = [name for name in BENCHMARKS if name in args.only] if args.only else \
        [name for name in BENCHMARKS if name not in OPT_IN]
    work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="tlp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    suite = Suite(mode, work, selected, fork=not args.spawn)
    suite.scale_sizes, suite.kept = args.scale_sizes, bool(args.workdir)
    weights = args.weights if args.weights in (*CALIBRATED, "none", "imagenet") else os.path.abspath(args.weights)
    suite.config = config = {**suite.config, "weights": weights}
    started, started_at = time.monotonic(), datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    document = {
        "suite": "tlp benchmark suite", "mode": mode, "command": "python -m bench.run " + " ".join(sys.argv[1:]),
        "started_at": started_at, "host": host_info(), "code": code_version(),
        "config": {k: v for k, v in config.items()},
        "model": {"base": "MobileNetV2", "alpha": config["alpha"], "image_size": config["image_size"],
                  "batch_size": config["batch_size"], "weights": config["weights"]},
        "benchmarks": {},
    }
    print(f"tlp benchmark suite, {mode} mode: {', '.join(selected)}; work dir {work}", flush=True)
    reports = []
    try:
        _run_all(suite, selected, reports, document, started, args.output,
                 Path(args.publish) if args.publish else None)
    finally:
        suite.close()
    document["fork_server"] = suite.server_info
    document["weights"] = {"spec": config["weights"], "description": _weights_label(config["weights"]),
                           "calibration": suite.calibration()}
    wall = time.monotonic() - started
    checks = [row for r in reports for row in r.rows if row["passed"] is not None]
    document.update({
        "wall_seconds": round(wall, 1),
        "within_budget": wall <= config["budget_seconds"],
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "children": suite.children,
        "children_cpu_seconds": round(sum(child.get("cpu_seconds", 0.0) for child in suite.children), 1),
        "summary": {
            "targets": len(checks), "met": sum(1 for row in checks if row["passed"]),
            "missed": [f"{r.name}: {row['label']}" for r in reports for row in r.rows if row["passed"] is False],
            "errors": [r.name for r in reports if r.status != "ok"],
        },
    })
    write_results(args.output, document)
    print(format_table(reports, mode, wall, config["budget_seconds"]))
    shares = [child["others_cpu_share"] for child in suite.children if "others_cpu_share" in child]
    if shares:
        print(f"children used {document['children_cpu_seconds']:,.0f} CPU seconds; other processes used "
              f"{min(shares):.0%}-{max(shares):.0%} of the CPUs while they ran (load average at start "
              f"{document['host']['load_average_at_start'][0]:.1f}, at end {document['load_average_at_end'][0]:.1f})")
    print(f"results written to {args.output}")
    failed = any(r.status != "ok" for r in reports)
    if args.workdir or failed:
        print(f"work dir kept: {work} (child logs in {work / 'logs'})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
