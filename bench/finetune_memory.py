"""Fine-tuning's peak memory by phase (training, export, drift reference) at several data set
sizes, each size in a fresh Python process (issue 29.5: no step may grow by more than 2 KB per
photo between sizes).

``python -m bench.finetune_memory RUN [RUN ...] [--before REV]``

Each RUN is a ``tlp run``'s task folder holding ``data-prep/dataset`` and
``feature-extraction/model`` (e.g. what ``bench.scale`` leaves in
``/tmp/tlp-bench-scale/scale/N/run/pipeline-root/transfer-learning-*``). Fine-tuning runs on
them alone (``training.fine_tune``, 1 epoch, the model's own options), with this checkout's
code or, with ``--before``, with the code of that git revision (installed into a folder of its
own that shadows the editable install, as bench/prep_memory.py does). Memory is the process
tree's summed RSS, sampled every 50 ms with psutil; the child marks where export and the drift
reference start, so each sample is charged to its phase.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PHASES = ("training", "export", "drift_reference")

# Run in the fresh child: marks each phase's start on stdout, then fine-tunes.
CHILD = """
import json, sys
from tlp.components.lib import training
from tlp.components.lib.settings import Settings, step_values
from tlp.components.lib.steps import FINE_TUNING

args = json.loads(sys.argv[1])
print(json.dumps({"module": training.__file__}), flush=True)

def marked(phase, function):
    def run(*a, **k):
        print(json.dumps({"phase": phase}), flush=True)
        return function(*a, **k)
    return run

training.model_lib.export_servable = marked("export", training.model_lib.export_servable)
training.write_drift_reference = marked("drift_reference", training.write_drift_reference)
options = step_values(FINE_TUNING, Settings.from_values({"fine_tune_epochs": 1, "seed": 42}, check=False).values())
training.fine_tune(args["dataset"], args["model"], args["output_dir"], Settings.for_step(FINE_TUNING, options))
"""


def run_fine_tuning(dataset: str, model: str, output_dir: str, pythonpath: str | None, interval: float = 0.05) -> dict:
    """Fine-tuning alone in a fresh process; its wall time and its process tree's peak RSS per phase (MB)."""
    import psutil

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    shutil.rmtree(output_dir, ignore_errors=True)
    args = json.dumps({"dataset": dataset, "model": model, "output_dir": output_dir})
    started = time.perf_counter()
    phase, lines = [PHASES[0]], []

    def read(stream) -> None:  # the child's stdout, as it comes: the phase marks
        for line in stream:
            lines.append(line)
            if line.startswith('{"phase"'):
                phase[0] = json.loads(line)["phase"]

    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen([sys.executable, "-c", CHILD, args], env=env, stdout=subprocess.PIPE,
                                 stderr=log, text=True)
        reader = threading.Thread(target=read, args=(child.stdout,), daemon=True)
        reader.start()
        root, peaks = psutil.Process(child.pid), dict.fromkeys(PHASES, 0)
        while child.poll() is None:
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss = 0
            for process in processes:
                try:
                    rss += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peaks[phase[0]] = max(peaks[phase[0]], rss)
            time.sleep(interval)
        child.wait()
        reader.join()
        if child.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"fine-tuning on {dataset} failed (exit {child.returncode}):\n{log.read()[-3000:]}")
    module = next(json.loads(line)["module"] for line in lines if line.startswith('{"module"'))
    return {"module": module, "wall_seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": {name: round(value / 1e6, 1) for name, value in peaks.items()},
            "overall_peak_rss_mb": round(max(peaks.values()) / 1e6, 1)}


def growth_kb(sizes: list[dict]) -> dict:
    """Per phase (and overall), the growth of peak memory per added photo between consecutive
    sizes, in KB per photo: ``(photos, run)`` pairs as ``{"photos": N, **run_fine_tuning(...)}``."""
    ordered = sorted(sizes, key=lambda size: size["photos"])
    growth: dict[str, list[float]] = {name: [] for name in (*PHASES, "overall")}
    for small, large in zip(ordered, ordered[1:], strict=False):
        added = large["photos"] - small["photos"]
        for name in PHASES:
            growth[name].append(round((large["peak_rss_mb"][name] - small["peak_rss_mb"][name]) * 1000 / added, 2))
        growth["overall"].append(round((large["overall_peak_rss_mb"] - small["overall_peak_rss_mb"]) * 1000 / added, 2))
    return growth


def measure(runs: list[str], work: Path, before: str | None = None) -> dict:
    from bench.prep_memory import REPO, install_before

    site = str(install_before(before, work)) if before else None
    sizes = []
    for run in runs:
        dataset, model = os.path.join(run, "data-prep", "dataset"), os.path.join(run, "feature-extraction", "model")
        with open(os.path.join(dataset, "metadata.json")) as handle:
            photos = sum(json.load(handle)["num_examples"].values())
        result = run_fine_tuning(dataset, model, str(work / f"model-{photos}"), site)
        expected = site or str(REPO)
        if not result["module"].startswith(expected):
            raise RuntimeError(f"fine-tuning imported {result['module']}, not the code under {expected}")
        print(f"  {photos:,} photos: {result['wall_seconds']:.1f} s, process tree peak RSS "
              + ", ".join(f"{name} {mb:,.1f} MB" for name, mb in result["peak_rss_mb"].items()), flush=True)
        sizes.append({"photos": photos, **result})
    return {"revision": before or "this checkout", "sizes": sizes, "growth_kb_per_photo": growth_kb(sizes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="task folders of tlp runs (globs allowed)")
    parser.add_argument("--before", help="git revision whose fine-tuning to measure instead of this checkout's")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "tlp-bench-finetune-memory"))
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    runs = [match for pattern in args.runs for match in sorted(glob.glob(pattern))]
    if not runs:
        raise SystemExit(f"no run folder matches {args.runs}; give the task folders of tlp runs")
    result = measure(runs, Path(args.work), args.before)
    for name, values in result["growth_kb_per_photo"].items():
        print(f"{name}: peak memory growth {', '.join(f'{v:.2f}' for v in values)} KB/photo (target <= 2)")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
