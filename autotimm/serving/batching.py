"""Micro-batching for the REST service: concurrent requests share one model call.

Requests that arrive within a short window (or while the model is busy) are
gathered into one batch, run in a worker thread, and each request gets its own
slice of the results back. Needs only the standard library, numpy and Pillow.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from autotimm.checks import require_number
from autotimm.prediction.predict import Prediction

__all__ = ["BatchStats", "MicroBatcher"]

#: ``predict(images, top_k) -> one Prediction per image``: the model call a batch makes.
PredictFn = Callable[[list[Any], int], list[Prediction]]


@dataclass
class BatchStats:
    """Counters of the batches run so far.

    Args:
        batches: Model calls made.
        images: Images predicted on.
        largest: The largest batch, in images.
    """

    batches: int = 0
    images: int = 0
    largest: int = 0

    def to_dict(self) -> dict[str, int]:
        """The counters as plain data (for JSON)."""
        return {"batches": self.batches, "images": self.images, "largest": self.largest}


@dataclass
class _Request:
    images: list[Any]
    top_k: int
    future: asyncio.Future[list[Prediction]]
    arrived: float = field(default_factory=time.monotonic)


def _truncate(prediction: Prediction, top_k: int) -> Prediction:
    """Keep the ``top_k`` most probable labels (predictions are sorted, most probable first)."""
    return Prediction(
        prediction.labels[:top_k], prediction.probabilities[:top_k], prediction.indices[:top_k], prediction.source
    )


def _fail(requests: Sequence[_Request], error: BaseException) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(error)


class MicroBatcher:
    """Gather concurrent prediction requests into batches for one model call each, run off the event loop.

    Requests that arrive while a batch runs wait for the next one, so under
    load batches fill up by themselves. Besides, while other requests are on
    their way (announced with `preparing`, e.g. while their uploads are decoded),
    the first waiting request waits for them up to ``batch_window_ms``; when no
    other request is on its way it runs at once, so a lone request pays no
    window. A batch holds up to ``max_batch_size`` images; a request with more
    runs as one batch of its own. One worker thread runs the model, so the model
    is never called concurrently.

    Args:
        predict: ``predict(images, top_k)``: one sorted
            [`Prediction`][autotimm.prediction.predict.Prediction] per image.
        max_batch_size: Images per model call at most (1 turns batching off).
        batch_window_ms: How long the first request of a batch may wait for requests on their way
            (0: never wait; run with those already queued).

    Raises:
        ValueError: A bad ``max_batch_size`` or ``batch_window_ms``.

    Example:
        >>> batcher = MicroBatcher(model_predict, max_batch_size=16, batch_window_ms=5)  # doctest: +SKIP
        >>> await batcher.start()  # doctest: +SKIP
        >>> with batcher.preparing():  # doctest: +SKIP
        ...     image = await decode(upload)  # others' batches may wait for this
        ...     future = batcher.enqueue([image], top_k=3)
        >>> [prediction] = await future  # doctest: +SKIP
    """

    def __init__(self, predict: PredictFn, max_batch_size: int = 16, batch_window_ms: float = 5.0) -> None:
        require_number("max_batch_size", max_batch_size, 1, integer=True)
        require_number("batch_window_ms", batch_window_ms, 0, 10_000, high_closed=True)
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.batch_window_ms = float(batch_window_ms)
        self.stats = BatchStats()
        self._pending: deque[_Request] = deque()
        self._pending_images = 0
        self._preparing = 0
        self._arrived: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether `start` was called and `close` was not."""
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        """Start the worker (in the running event loop)."""
        if self.running:
            return
        self._arrived, self._changed = asyncio.Event(), asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autotimm-predict")
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="autotimm-micro-batcher")

    async def run_now(self, images: Sequence[Any], top_k: int) -> list[Prediction]:
        """Run ``predict`` once in the worker thread, without batching (e.g. a warm-up call)."""
        if self._executor is None:
            raise RuntimeError("MicroBatcher.start() must be awaited first")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._predict, list(images), top_k)

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Announce a request on its way: while any is, a waiting batch may wait for it (up to the window).

        Enqueue the request inside the block; leaving it ends the announcement.
        """
        self._preparing += 1
        try:
            yield
        finally:
            self._preparing -= 1
            if self._changed is not None:
                self._changed.set()

    def enqueue(self, images: Sequence[Any], top_k: int) -> asyncio.Future[list[Prediction]]:
        """Queue images for the next batch; await the returned future for their predictions.

        Args:
            images: The request's images (kept together in one batch).
            top_k: Labels per image, most probable first.

        Returns:
            A future of one [`Prediction`][autotimm.prediction.predict.Prediction] per image, in order;
            it raises whatever ``predict`` raised for the batch.

        Raises:
            RuntimeError: The batcher is not running.
        """
        if not self.running or self._arrived is None or self._changed is None:
            raise RuntimeError("The micro-batcher is not running (call start() first)")
        future: asyncio.Future[list[Prediction]] = asyncio.get_running_loop().create_future()
        if not images:
            future.set_result([])
            return future
        self._pending.append(_Request(list(images), top_k, future))
        self._pending_images += len(images)
        self._arrived.set()
        self._changed.set()
        return future

    async def submit(self, images: Sequence[Any], top_k: int) -> list[Prediction]:
        """Queue images for the next batch and wait for their predictions (`enqueue`, awaited)."""
        return await self.enqueue(images, top_k)

    async def close(self) -> None:
        """Stop the worker; requests still waiting fail with ``RuntimeError``."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        _fail(list(self._pending), RuntimeError("The service is shutting down"))
        self._pending.clear()
        self._pending_images = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _work(self) -> None:
        assert self._arrived is not None and self._changed is not None
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            # Wait for requests on their way, until the batch is full or the window (counted from the
            # oldest request's arrival) closes; those that waited while the previous batch ran go at once.
            deadline = self._pending[0].arrived + self.batch_window_ms / 1000
            while self._preparing > 0 and self._pending_images < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            await self._run(self._take())

    def _take(self) -> list[_Request]:
        """Pop waiting requests, in order, up to ``max_batch_size`` images (at least one request)."""
        batch: list[_Request] = []
        count = 0
        while self._pending:
            size = len(self._pending[0].images)
            if batch and count + size > self.max_batch_size:
                break
            request = self._pending.popleft()
            self._pending_images -= size
            if not request.future.done():  # a client that went away cancels its future
                batch.append(request)
                count += size
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        if not batch:
            return
        images = [image for request in batch for image in request.images]
        top_k = max(request.top_k for request in batch)
        try:
            predictions = await self.run_now(images, top_k)
            if len(predictions) != len(images):
                raise RuntimeError(f"predict returned {len(predictions)} predictions for {len(images)} images")
        except asyncio.CancelledError:  # closing while a batch runs
            _fail(batch, RuntimeError("The service is shutting down"))
            raise
        except Exception as err:  # every request of the batch gets the error; the worker goes on
            _fail(batch, err)
            return
        self.stats.batches += 1
        self.stats.images += len(images)
        self.stats.largest = max(self.stats.largest, len(images))
        start = 0
        for request in batch:
            mine = predictions[start : start + len(request.images)]
            start += len(request.images)
            if not request.future.done():
                request.future.set_result([_truncate(p, request.top_k) for p in mine])
