"""Data prep alone at the scale benchmark's sizes: ``tlp component data-prep`` (the step as kfp's
local runner runs it, 64 px like benchmark 12) on each size's photo folder, the step's process
tree sampled every 0.1 s (``bench.scale.run_measured``); prints each size's peak memory and CPU
seconds and the growth per added photo. For re-measuring data prep after a change without running
the whole pipeline at 100,000 photos again.

``python -m bench.prep_alone --workdir WORKDIR [--sizes 2000 20000 100000]``: WORKDIR is a scale
benchmark's ``--workdir`` (its ``scale/N/photos`` folders are used as they are).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
from pathlib import Path

from bench import scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prep_alone", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a scale benchmark's --workdir")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    args = parser.parse_args(argv)
    tlp = str(Path(sys.executable).parent / "tlp")
    measured = []
    for size in sorted(args.sizes):
        folder = os.path.join(args.workdir, "scale", str(size), "photos")
        if not os.path.isdir(folder):
            parser.error(f"{folder} does not exist; run python -m bench.run --only scale --workdir {args.workdir} "
                         f"--scale-sizes {size} ... first (it makes the photo folders).")
        out = os.path.join(args.workdir, "prep-alone", str(size))
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        run = scale.run_measured([tlp, "component", "data-prep", "--output-dir", out, "--param",
                                  f"data=folder:{folder}", "--param", "image_size=64"], f"{out}.log",
                                 dict(os.environ), os.getcwd())
        if run["exit_code"] != 0:
            print(f"data prep on {size:,} photos failed: see {out}.log", file=sys.stderr)
            return 1
        step = run["steps"]["data-prep"]
        measured.append((size, step["peak_rss_mb"], step["cpu_seconds"]))
        print(f"{size:>9,} photos: peak {step['peak_rss_mb']:,.1f} MB, {step['cpu_seconds']:,.1f} CPU s, "
              f"{run['wall_seconds']:,.1f} s", flush=True)
    for (n_a, mb_a, _), (n_b, mb_b, _) in itertools.pairwise(measured):
        print(f"growth {n_a:,} -> {n_b:,}: {(mb_b - mb_a) * 1000 / (n_b - n_a):.2f} KB per added photo "
              f"(target <= {scale.GROWTH_TARGET_KB:g})")
    print(json.dumps({"sizes": [{"photos": n, "peak_mb": mb, "cpu_seconds": cpu} for n, mb, cpu in measured]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
