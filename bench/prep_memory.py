"""Data prep's peak memory before and after Apache Beam, on the same photos, each side in a
fresh Python process started from nothing (not forked from a process with TensorFlow loaded).

``python -m bench.prep_memory [--photos 5000] [--before 8571976^] [--rounds 1] [--before-side after]``

"before" is tlp 0.1.0's data prep (``images.prepare_dataset`` and its hand-made process pool),
taken from git at ``--before`` (the commit before Beam replaced it) and installed into a
scratch folder that shadows the editable install on PYTHONPATH (``--before-side after``: that
revision's Beam data prep, for a revision after 8571976); "after" is this checkout's
``dataprep.prepare.prepare_dataset`` (Beam's DirectRunner, a worker per core). Both run with
their defaults for this many photos (every core). Memory is the process tree's: the sum of the
resident sets of the step's process and every worker it started, sampled every 50 ms with psutil
(its peak, and the largest single process's peak). The sides alternate when ``--rounds`` > 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEFORE_BEAM = "8571976^"  # the last commit with images._Pool (8571976 moved data prep to Beam)

# Run in the fresh child: prints where prepare_dataset came from, then the step's summary.
SIDES = {
    "before": "from tlp.components.lib import images as m",
    "after": "from tlp.components.lib.dataprep import prepare as m",
}
CHILD = """
import json, sys, time
{import_line}
args = json.loads(sys.argv[1])
print(json.dumps({{"module": m.__file__}}), flush=True)
start = time.perf_counter()
metadata = m.prepare_dataset(args["data"], args["output_dir"], image_size=args["image_size"], seed=args["seed"])
print(json.dumps({{"seconds": time.perf_counter() - start, "num_examples": metadata["num_examples"],
                  "files": {{k: len(v) for k, v in metadata["files"].items()}},
                  "fingerprint": metadata["fingerprint"]}}), flush=True)
"""


def install_before(revision: str, work: Path) -> Path:
    """tlp at ``revision`` (from git) installed, without its dependencies, into a folder of its
    own; returns that folder, to go first on PYTHONPATH."""
    site = work / f"site-{revision.replace('^', '-parent').replace('/', '_')}"
    if (site / "tlp" / "components" / "lib" / "images.py").exists():
        return site
    source = work / "source-before"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True).stdout
    with tempfile.TemporaryFile() as handle:
        handle.write(archive)
        handle.seek(0)
        tarfile.open(fileobj=handle).extractall(source, filter="data")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True)
    return site


def run_side(side: str, args: dict, pythonpath: str | None, interval: float = 0.05) -> dict:
    """One data prep in a fresh process; its wall time and its process tree's peak RSS."""
    import psutil

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    shutil.rmtree(args["output_dir"], ignore_errors=True)
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(import_line=SIDES[side]), json.dumps(args)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(child.pid)
    tree_peak = single_peak = 0
    largest_tree = 0
    while child.poll() is None:
        try:
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        rss = []
        for process in processes:
            try:
                rss.append(process.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        tree_peak, single_peak = max(tree_peak, sum(rss)), max([single_peak, *rss])
        largest_tree = max(largest_tree, len(rss))
        time.sleep(interval)
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"the {side} side failed (exit {child.returncode}):\n{stderr[-3000:]}")
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {"side": side, "module": lines[0]["module"], **lines[-1], "wall_seconds": round(seconds, 1),
            "tree_peak_rss_mb": round(tree_peak / 1e6, 1), "largest_process_peak_rss_mb": round(single_peak / 1e6, 1),
            "processes": largest_tree}


def measure(photos: str, work: Path, image_size: int, seed: int, before: str = BEFORE_BEAM, rounds: int = 1,
            before_side: str = "before") -> dict:
    site = install_before(before, work)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for round_index in range(rounds):
        for side in ("before", "after") if round_index % 2 == 0 else ("after", "before"):
            args = {"data": f"folder:{photos}", "output_dir": str(work / f"dataset-{side}"),
                    "image_size": image_size, "seed": seed}
            run = run_side(before_side if side == "before" else side, args, str(site) if side == "before" else None)
            expected = str(site) if side == "before" else str(REPO)
            if not run["module"].startswith(expected):
                raise RuntimeError(f"the {side} side imported {run['module']}, not the code under {expected}")
            print(f"  {side}: {run['wall_seconds']:.1f} s, process tree peak RSS {run['tree_peak_rss_mb']:,.0f} MB "
                  f"(largest process {run['largest_process_peak_rss_mb']:,.0f} MB, up to {run['processes']} "
                  f"processes), {run['num_examples']} examples", flush=True)
            runs[side].append(run)
    summary = {side: {"tree_peak_rss_mb": statistics.median(r["tree_peak_rss_mb"] for r in side_runs),
                      "largest_process_peak_rss_mb": statistics.median(r["largest_process_peak_rss_mb"]
                                                                      for r in side_runs),
                      "wall_seconds": statistics.median(r["wall_seconds"] for r in side_runs)}
               for side, side_runs in runs.items()}
    same_split = runs["before"][0]["files"] == runs["after"][0]["files"] and \
        runs["before"][0]["num_examples"] == runs["after"][0]["num_examples"]
    return {"before_revision": before, "runs": runs, "median": summary, "same_counts": same_split}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=5000, help="generated camera-sized JPEG photos (default 5000)")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--before", default=BEFORE_BEAM, help=f"git revision of the old data prep ({BEFORE_BEAM})")
    parser.add_argument("--before-side", choices=sorted(SIDES), default="before",
                        help="which data prep --before holds: tlp 0.1.0's (before) or Beam's (after)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per side, alternating (default 1)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "tlp-bench-prep-memory"))
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)

    from bench.workloads import make_photos

    work = Path(args.work)
    photos = work / f"photos-{args.photos}"
    if not (photos / "squares").is_dir():
        print(f"making {args.photos:,} photos in {photos} (not timed)", flush=True)
        make_photos(str(photos), args.photos, args.seed)
    result = measure(str(photos), work, args.image_size, args.seed, args.before, args.rounds, args.before_side)
    before, after = result["median"]["before"], result["median"]["after"]
    print(f"peak RSS of the process tree: before {before['tree_peak_rss_mb']:,.0f} MB, after "
          f"{after['tree_peak_rss_mb']:,.0f} MB ({after['tree_peak_rss_mb'] / before['tree_peak_rss_mb']:.2f}x); "
          f"largest process {before['largest_process_peak_rss_mb']:,.0f} / "
          f"{after['largest_process_peak_rss_mb']:,.0f} MB; "
          f"wall {before['wall_seconds']:.1f} / {after['wall_seconds']:.1f} s; same counts: {result['same_counts']}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
