"""Listing a bucket of photos by class prefix in parallel (``sources.list_bucket``, used by data
prep and the fingerprint step) against one sequential listing of the whole folder, on the tests'
Cloud Storage stand-in with a pause on every listing page as a bucket's round trip.

``python -m bench.listing [--classes 8] [--per-class 3000] [--page-seconds 0.1]``

The stand-in answers pages one at a time; the pause is taken outside its lock (as a real bucket
answers requests together), so the figure is the listings' waiting, not the stand-in's own work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def measure(classes: int, per_class: int, page_seconds: float) -> dict:
    from tests.cloud.listing_latency import add_listing_latency
    from tests.cloud.standin import StandIn

    standin = StandIn()
    os.environ["STORAGE_EMULATOR_HOST"] = standin.url  # this process only: the bench is its own runner
    try:
        for label in range(classes):
            for index in range(per_class):
                standin.put_object(f"gs://photos/pets/class-{label}/{index:06d}.jpg", b"x")
        latency = add_listing_latency(standin, page_seconds)
        from google.cloud import storage

        from tlp.components.lib.dataprep import sources

        start = time.perf_counter()
        client = storage.Client(project=None)
        sequential = sum(1 for _ in client.list_blobs("photos", prefix="pets/", page_size=sources.LIST_PAGE_SIZE))
        sequential_seconds, sequential_pages = time.perf_counter() - start, latency.pages
        latency.pages = latency.most_at_once = 0
        start = time.perf_counter()
        parallel = sum(len(objects) for objects in sources.list_bucket("gs://photos/pets").values())
        parallel_seconds = time.perf_counter() - start
    finally:
        standin.close()
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    if sequential != parallel:
        raise RuntimeError(f"the listings differ: {sequential} objects one after another, {parallel} in parallel")
    return {"objects": parallel, "classes": classes, "page_seconds": page_seconds,
            "sequential": {"seconds": round(sequential_seconds, 2), "pages": sequential_pages},
            "parallel": {"seconds": round(parallel_seconds, 2), "pages": latency.pages,
                         "most_at_once": latency.most_at_once},
            "speedup": round(sequential_seconds / parallel_seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=3000, help="objects per class prefix (default 3000)")
    parser.add_argument("--page-seconds", type=float, default=0.1, help="pause per listing page (default 0.1)")
    args = parser.parse_args(argv)
    result = measure(args.classes, args.per_class, args.page_seconds)
    print(json.dumps(result))
    print(f"{result['objects']:,} objects in {args.classes} classes: one listing {result['sequential']['seconds']} s "
          f"({result['sequential']['pages']} pages), by class prefix {result['parallel']['seconds']} s "
          f"({result['parallel']['pages']} pages, up to {result['parallel']['most_at_once']} at once): "
          f"{result['speedup']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
