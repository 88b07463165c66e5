"""Benchmark 12's machinery: the whole pipeline (``tlp run``) on generated photos at several
sizes, each step's seconds, CPU seconds and peak memory.

A step's memory is its process tree's: kfp's local runner starts every step as a child of the
``tlp run`` process (``sh`` then ``python -m kfp.dsl.executor_main``), and a step may start
processes of its own (data prep's Beam workers). The tree is sampled every ``interval``
seconds with psutil; each process is charged to the step named in its topmost ancestor below
``tlp run`` (kfp passes that task's executor output file, ``.../TASK/executor_output.json``,
on the command line); the per-step RSS of a sample is the sum over that step's processes, and
the step's peak is the largest such sum. ``tlp run`` itself is charged to ``orchestrator``.

The photos are made once into a pool (``ensure_photos``), extended when a larger size asks
for more, and every size's folder holds hard links to the first N of them: the 2,000 photos
are among the 20,000, and nothing is generated twice. This module imports no TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

ORCHESTRATOR = "orchestrator"
CLASSES = ("circles", "squares")  # bench.workloads._photo: label = index % 2
# Source sizes of the scale photos (width, height, share): phone photos of 0.3 to 2 megapixels,
# 0.9 on average; the 5-megapixel camera photos of PHOTO_SIZES would make 100,000 photos about
# 30 GB and take hours to generate on 2 cores, and data prep decodes in draft mode anyway.
SCALE_PHOTO_SIZES = ((640, 480, 0.35), (1024, 768, 0.35), (1280, 960, 0.15), (1200, 1600, 0.075),
                     (1600, 1200, 0.075))
PER_PHOTO_TARGET = 1.10  # "flat or falling": per-photo cost at the largest size within 10% of the smallest's
GROWTH_TARGET_KB = 2.0  # peak memory may grow by at most 2 KB per added photo between sizes
_OUTPUT_FILE = re.compile(r'"outputFile"\s*:\s*"([^"]+)"')


def step_of(cmdline: Iterable[str]) -> str | None:
    """The kfp task a step process runs, from its command line (the task folder of its
    executor output file); None for a process that is not a kfp step."""
    found = _OUTPUT_FILE.search(" ".join(cmdline).replace('\\"', '"'))
    return os.path.basename(os.path.dirname(found.group(1))) if found else None


@dataclass
class Proc:
    """One process in one sample of the tree."""

    pid: int
    ppid: int
    rss: int  # bytes
    cpu: float  # user + system seconds so far
    cmdline: tuple = ()


@dataclass
class StepUsage:
    peak_rss: int = 0  # the largest sum over the step's processes in one sample, bytes
    largest_process_rss: int = 0
    most_processes: int = 0
    first_seen: float | None = None
    last_seen: float | None = None
    cpu_by_pid: dict = field(default_factory=dict)  # the last CPU seconds seen for each process

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_pid.values())


class TreeUsage:
    """Per-step peak summed RSS and CPU seconds from samples of a process tree rooted at
    ``root`` (the ``tlp run`` process)."""

    def __init__(self, root: int):
        self.root = root
        self.steps: dict[str, StepUsage] = {}
        self._step_by_pid: dict[int, str] = {root: ORCHESTRATOR}
        self.samples = 0

    def _step(self, proc: Proc, by_pid: dict[int, Proc]) -> str:
        """The step a process belongs to: its own, or that of the nearest ancestor with one."""
        chain, current = [], proc
        while current.pid not in self._step_by_pid:
            chain.append(current)
            parent = by_pid.get(current.ppid)
            if parent is None:
                break
            current = parent
        step = self._step_by_pid.get(current.pid, ORCHESTRATOR)
        for member in reversed(chain):  # top down: a step's own command line names it first
            step = self._step_by_pid.setdefault(member.pid, step_of(member.cmdline) or step)
        return self._step_by_pid.get(proc.pid, step)

    def add(self, procs: list[Proc], at: float) -> None:
        by_pid = {proc.pid: proc for proc in procs}
        totals: dict[str, list[int]] = {}
        for proc in procs:
            step = self._step(proc, by_pid)
            totals.setdefault(step, []).append(proc.rss)
            usage = self.steps.setdefault(step, StepUsage())
            usage.cpu_by_pid[proc.pid] = max(proc.cpu, usage.cpu_by_pid.get(proc.pid, 0.0))
        for step, rss in totals.items():
            usage = self.steps[step]
            usage.peak_rss = max(usage.peak_rss, sum(rss))
            usage.largest_process_rss = max(usage.largest_process_rss, *rss)
            usage.most_processes = max(usage.most_processes, len(rss))
            usage.first_seen = at if usage.first_seen is None else usage.first_seen
            usage.last_seen = at
        self.samples += 1

    def to_json(self) -> dict:
        return {step: {"peak_rss_mb": round(u.peak_rss / 1e6, 1),
                       "largest_process_rss_mb": round(u.largest_process_rss / 1e6, 1),
                       "most_processes": u.most_processes, "cpu_seconds": round(u.cpu_seconds, 1),
                       "seen_seconds": round((u.last_seen or 0) - (u.first_seen or 0), 1)}
                for step, u in self.steps.items()}


def sample_tree(root) -> list[Proc]:
    """One sample of ``root`` (a psutil.Process) and its descendants; processes that end while
    being read are left out of this sample."""
    import psutil

    procs = []
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for process in members:
        try:
            with process.oneshot():
                times = process.cpu_times()
                procs.append(Proc(process.pid, process.ppid(), process.memory_info().rss,
                                  times.user + times.system, tuple(process.cmdline())))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return procs


def run_measured(command: list[str], log_path: str, env: dict, cwd: str, interval: float = 0.1,
                 timeout: float = 6 * 3600) -> dict:
    """Runs ``command`` (``tlp run ...``) in its own session, sampling its process tree until it
    ends; returns its exit code, wall seconds and the per-step usage."""
    import psutil

    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        usage, root, timed_out = TreeUsage(proc.pid), psutil.Process(proc.pid), False
        while proc.poll() is None:
            usage.add(sample_tree(root), time.monotonic() - start)
            if time.monotonic() - start > timeout:
                os.killpg(proc.pid, 9)  # the session this benchmark started for it
                timed_out = True
                proc.wait()
                break
            time.sleep(interval)
    return {"exit_code": proc.returncode, "wall_seconds": round(time.monotonic() - start, 1),
            "timed_out": timed_out, "samples": usage.samples, "steps": usage.to_json()}


# --- the photos -------------------------------------------------------------------------------


def _scale_photo(index: int, root: str, seed: int) -> tuple[int, int]:
    from bench import workloads

    return workloads.photo(index, root, seed, SCALE_PHOTO_SIZES)


def ensure_photos(pool: str, count: int, seed: int, chunk: int = 2000) -> dict:
    """At least ``count`` distinct photos in ``pool`` (two class folders, ``IMG_{index}.jpg``),
    made on every core in chunks; ``pool/made.json`` records how many exist after each chunk,
    so a stopped run keeps what it made and the next one goes on from there."""
    import functools
    from concurrent.futures import ProcessPoolExecutor

    manifest_path = os.path.join(pool, "made.json")
    manifest = {"count": 0, "seed": seed, "seconds": 0.0, "bytes": 0, "pixels": 0}
    if os.path.exists(manifest_path):
        with open(manifest_path) as handle:
            manifest = json.load(handle)
        if manifest["seed"] != seed:
            raise ValueError(f"the photo pool {pool} was made with seed {manifest['seed']}, not {seed}; "
                             "remove it or pass another --workdir.")
    made_now = 0
    for name in CLASSES:
        os.makedirs(os.path.join(pool, name), exist_ok=True)
    while manifest["count"] < count:
        first, last = manifest["count"], min(count, manifest["count"] + chunk)
        started = time.perf_counter()
        with ProcessPoolExecutor(os.cpu_count() or 1) as workers:
            made = list(workers.map(functools.partial(_scale_photo, root=pool, seed=seed), range(first, last),
                                    chunksize=32))
        manifest.update(count=last, seconds=round(manifest["seconds"] + time.perf_counter() - started, 1),
                        pixels=manifest["pixels"] + sum(p for p, _ in made),
                        bytes=manifest["bytes"] + sum(b for _, b in made))
        with open(manifest_path + ".tmp", "w") as handle:
            json.dump(manifest, handle)
        os.replace(manifest_path + ".tmp", manifest_path)
        made_now += last - first
        print(f"    photos: {last:,} of {count:,} made ({manifest['seconds']:.0f} s so far)", flush=True)
    return {**manifest, "made_now": made_now}


def photo_name(index: int) -> str:
    return os.path.join(CLASSES[index % 2], f"IMG_{index:05d}.jpg")


def link_folder(pool: str, folder: str, count: int) -> str:
    """``folder`` with hard links to the first ``count`` photos of the pool (made if missing)."""
    for name in CLASSES:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    for index in range(count):
        target = os.path.join(folder, photo_name(index))
        if not os.path.exists(target):
            os.link(os.path.join(pool, photo_name(index)), target)
    extra = sum(len(os.listdir(os.path.join(folder, name))) for name in CLASSES) - count
    if extra:
        raise ValueError(f"{folder} holds {extra} photos more than {count}; remove the folder and run again.")
    return folder


# --- the checks -------------------------------------------------------------------------------


def per_photo_ratio(points: list[tuple[int, float]]) -> float:
    """Per-photo cost at the largest size over that at the smallest (``(photos, cost)`` pairs)."""
    (small, c_small), (large, c_large) = min(points), max(points)
    return (c_large / large) / (c_small / small)


def worst_growth_kb(points: list[tuple[int, float]]) -> tuple[float, tuple[int, int]]:
    """The largest growth of peak memory (MB) per added photo between consecutive sizes, in KB
    per photo, and the pair of sizes it was measured between."""
    ordered = sorted(points)
    growths = [((m_b - m_a) * 1000 / (n_b - n_a), (n_a, n_b))
               for (n_a, m_a), (n_b, m_b) in zip(ordered, ordered[1:], strict=False)]
    return max(growths)


def estimate_seconds(points: list[tuple[int, float]], photos: int) -> float:
    """Linear extrapolation (fixed + per photo) of a size's seconds from the measured sizes."""
    from bench.run import _linear_fit

    fixed, slope = _linear_fit([(float(n), t) for n, t in points])
    return fixed + slope * photos
