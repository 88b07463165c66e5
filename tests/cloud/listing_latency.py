"""A pause on every Cloud Storage listing page the stand-in answers, as a real bucket's round
trip, and how many listing requests were in flight at once.

The stand-in answers one request at a time (under its lock); the pause is taken outside it, so
requests sent together wait together, as they would on Cloud Storage. ``bucket_in_own_process``
runs such a stand-in in a process of its own, as Cloud Storage is: its page work then does not
share the listing client's interpreter (GIL) with the client's threads.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.cloud.standin import StandIn

_LIST_OBJECTS = re.compile(r"^/storage/v1/b/[^/]+/o/?$")


@dataclass
class ListingLatency:
    seconds: float
    pages: int = 0
    in_flight: int = 0
    most_at_once: int = 0
    _lock: threading.Condition = field(default_factory=threading.Condition)


def add_listing_latency(standin: StandIn, seconds: float, gather: int = 0) -> ListingLatency:
    """``gather``: a page also waits (at most 10 s) until that many listing requests are in flight,
    so that a test of how many a client sends at once does not depend on how fast a loaded machine
    starts the client's threads; a client that sends them one at a time still shows 1."""
    latency = ListingLatency(seconds)
    answer = standin._handle

    def handle(method: str, raw_path: str, raw_query: str, headers: dict, data: bytes):
        if method != "GET" or not _LIST_OBJECTS.match(raw_path):
            return answer(method, raw_path, raw_query, headers, data)
        with latency._lock:
            latency.pages += 1
            latency.in_flight += 1
            latency.most_at_once = max(latency.most_at_once, latency.in_flight)
            latency._lock.notify_all()
            if gather and "delimiter=" not in raw_query:  # a class's page, not the listing of the classes
                latency._lock.wait_for(lambda: latency.most_at_once >= gather, timeout=10)
        try:
            time.sleep(latency.seconds)
            return answer(method, raw_path, raw_query, headers, data)
        finally:
            with latency._lock:
                latency.in_flight -= 1

    setattr(standin, "_handle", handle)  # noqa: B010 - the request handler calls standin._handle
    return latency


class RemoteBucket:
    """A stand-in serving ``objects`` from its own process (``bucket_in_own_process``): its URL,
    and its listing pages counted there."""

    def __init__(self, connection, url: str):
        self._connection, self.url = connection, url

    def counts(self) -> dict:
        """{"pages": listing pages answered, "most_at_once": most listing requests in flight at once}."""
        self._connection.send("counts")
        return self._connection.recv()

    def reset(self) -> None:
        self._connection.send("reset")
        self._connection.recv()


def _serve(connection, objects: dict[str, bytes], seconds: float) -> None:
    standin = StandIn()
    for uri, data in objects.items():
        standin.put_object(uri, data)
    latency = add_listing_latency(standin, seconds)
    connection.send(standin.url)
    try:
        while (command := connection.recv()) != "close":
            if command == "reset":
                with latency._lock:
                    latency.pages = latency.most_at_once = 0
            connection.send({"pages": latency.pages, "most_at_once": latency.most_at_once})
    finally:
        standin.close()


@contextlib.contextmanager
def bucket_in_own_process(objects: dict[str, bytes], seconds: float) -> Iterator[RemoteBucket]:
    """A stand-in holding ``objects`` (gs:// URI -> bytes), with ``seconds`` on every listing page,
    served from a child process (spawned: no threads of this process are copied into it)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve, args=(theirs, objects, seconds), name="storage-standin", daemon=True)
    process.start()
    try:
        if not ours.poll(120):
            raise RuntimeError(f"the storage stand-in's process did not start in 120 s (exit code {process.exitcode})")
        yield RemoteBucket(ours, ours.recv())
    finally:
        if process.is_alive():
            ours.send("close")
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
