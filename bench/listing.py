"""Listing a bucket of photos by class prefix in parallel (``sources.list_bucket``, used by data
prep and the fingerprint step) against the same listing one class prefix after another, on the
tests' Cloud Storage stand-in with a pause on every listing page as a bucket's round trip.

``python -m bench.listing [--classes 8] [--per-class 3000] [--page-seconds 0.1] [--repeats 3]``

Both listings are the same client code (``list_bucket``), only its number of threads differs.
The stand-in runs in a process of its own, as Cloud Storage does, so its page work does not take
the client's interpreter lock; the pause is taken outside its own lock (a real bucket answers
requests together). Each figure is the median of ``--repeats`` listings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _timed(bucket, threads: int, repeats: int) -> tuple[float, dict, int]:
    from tlp.components.lib.dataprep import sources

    seconds, objects = [], 0
    bucket.reset()
    for _ in range(repeats):
        start = time.perf_counter()
        objects = sum(len(listed) for listed in sources.list_bucket("gs://photos/pets", threads=threads).values())
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), bucket.counts(), objects


def measure(classes: int, per_class: int, page_seconds: float, repeats: int = 3) -> dict:
    from tests.cloud.listing_latency import bucket_in_own_process
    from tlp.components.lib.dataprep import sources

    objects = {f"gs://photos/pets/class-{label}/{index:06d}.jpg": b"x"
               for label in range(classes) for index in range(per_class)}
    with bucket_in_own_process(objects, page_seconds) as bucket:
        before = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = bucket.url  # this process only: the bench is its own runner
        try:
            sequential_seconds, sequential, listed_one = _timed(bucket, 1, repeats)
            parallel_seconds, parallel, listed_all = _timed(bucket, sources.LISTING_THREADS, repeats)
        finally:
            if before is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = before
    if not listed_one == listed_all == len(objects):
        raise RuntimeError(f"the listings differ: {listed_one} objects one prefix after another, {listed_all} in "
                           f"parallel, {len(objects)} in the bucket")
    return {"objects": listed_all, "classes": classes, "page_seconds": page_seconds, "repeats": repeats,
            "sequential": {"seconds": round(sequential_seconds, 2), "pages": sequential["pages"] // repeats,
                           "most_at_once": sequential["most_at_once"]},
            "parallel": {"seconds": round(parallel_seconds, 2), "pages": parallel["pages"] // repeats,
                         "most_at_once": parallel["most_at_once"], "threads": sources.LISTING_THREADS},
            "speedup": round(sequential_seconds / parallel_seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=3000, help="objects per class prefix (default 3000)")
    parser.add_argument("--page-seconds", type=float, default=0.1, help="pause per listing page (default 0.1)")
    parser.add_argument("--repeats", type=int, default=3, help="listings of each kind; the median counts (default 3)")
    args = parser.parse_args(argv)
    result = measure(args.classes, args.per_class, args.page_seconds, args.repeats)
    print(json.dumps(result))
    print(f"{result['objects']:,} objects in {args.classes} classes: one prefix after another "
          f"{result['sequential']['seconds']} s ({result['sequential']['pages']} pages), "
          f"{result['parallel']['threads']} at once {result['parallel']['seconds']} s "
          f"({result['parallel']['pages']} pages, up to {result['parallel']['most_at_once']} in flight): "
          f"{result['speedup']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
