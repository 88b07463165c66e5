"""A pause on every Cloud Storage listing page the stand-in answers, as a real bucket's round
trip, and how many listing requests were in flight at once.

The stand-in answers one request at a time (under its lock); the pause is taken outside it, so
requests sent together wait together, as they would on Cloud Storage.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from tests.cloud.standin import StandIn

_LIST_OBJECTS = re.compile(r"^/storage/v1/b/[^/]+/o/?$")


@dataclass
class ListingLatency:
    seconds: float
    pages: int = 0
    in_flight: int = 0
    most_at_once: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)


def add_listing_latency(standin: StandIn, seconds: float) -> ListingLatency:
    latency = ListingLatency(seconds)
    answer = standin._handle

    def handle(method: str, raw_path: str, raw_query: str, headers: dict, data: bytes):
        if method != "GET" or not _LIST_OBJECTS.match(raw_path):
            return answer(method, raw_path, raw_query, headers, data)
        with latency._lock:
            latency.pages += 1
            latency.in_flight += 1
            latency.most_at_once = max(latency.most_at_once, latency.in_flight)
        try:
            time.sleep(latency.seconds)
            return answer(method, raw_path, raw_query, headers, data)
        finally:
            with latency._lock:
                latency.in_flight -= 1

    setattr(standin, "_handle", handle)  # noqa: B010 - the request handler calls standin._handle
    return latency
