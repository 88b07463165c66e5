"""Micro-batching: images of concurrent requests run through the model together."""

from __future__ import annotations

import asyncio
import concurrent.futures

from tlp.components.lib.serving.predictor import Prediction, Unreadable


class MicroBatcher:
    """Collects images from concurrent requests into batches of up to ``max_batch``, waiting at
    most ``max_latency_ms`` after the first one for more, and runs one batch at a time on a
    worker thread (the event loop keeps accepting requests meanwhile)."""

    def __init__(self, predict, max_batch: int, max_latency_ms: float, observe_batch=None):
        self._predict = predict
        self.max_batch = max_batch
        self.max_latency = max_latency_ms / 1000.0
        self._observe = observe_batch or (lambda size: None)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlp-predict")

    async def submit(self, images: list[bytes]) -> list[Prediction | Unreadable]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run(self._queue))
        futures = []
        for image in images:
            future = loop.create_future()
            self._queue.put_nowait((image, future))
            futures.append(future)
        return list(await asyncio.gather(*futures))

    async def _run(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_latency
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [(image, future) for image, future in batch if not future.cancelled()]
            if not live:
                continue
            self._observe(len(live))
            try:
                results = await loop.run_in_executor(self._executor, self._predict, [image for image, _ in live])
            except Exception as error:  # answer every waiting request instead of leaving it hanging
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
