"""Micro-batching: concurrent requests gathered into one model batch (docs/design.md "serve/").

Requests wait in an asyncio queue. The batcher takes the first waiting request, then keeps taking
requests until the batch holds ``max_batch`` texts or ``max_wait_ms`` have passed since it
started gathering, and hands the batch to a single worker thread, so the event loop (``/healthz``,
new requests) keeps answering while the model runs. Requests that arrive during a batch wait for
the next one, which is where batching comes from under load; a lone request waits at most
``max_wait_ms``. A request whose caller gave up (timeout, disconnect) before its batch started is
dropped from the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """More texts are waiting than ``max_queue_texts`` allows (the service answers 503)."""


@dataclass
class Job:
    """One request's share of a batch: its texts, whether to purge them, and who waits for it."""

    texts: list[str]
    purge: bool
    request_id: str
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Gathers :class:`Job` objects into batches and runs ``work(jobs) -> results`` off the loop.

    ``work`` returns one result per job, in order; an exception fails every job of the batch.
    """

    def __init__(
        self,
        work: Callable[[list[Job]], list[Any]],
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue_texts: int,
    ) -> None:
        self.work = work
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_texts = max_queue_texts
        self.queued_texts = 0
        self.batches = 0
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peftshield-model")

    async def start(self) -> None:
        """Start the gathering loop (inside the running event loop)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="peftshield-batcher")

    async def stop(self) -> None:
        """Stop the loop and the worker thread (after the server stopped taking requests)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def in_worker(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model thread (warm-up), in turn with the batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def submit(self, texts: list[str], purge: bool, request_id: str) -> Any:
        """Queue one request and wait for its result; :class:`QueueFull` when over the limit."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        if self.queued_texts + len(texts) > self.max_queue_texts:
            raise QueueFull
        future = asyncio.get_running_loop().create_future()
        self.queued_texts += len(texts)
        self._queue.put_nowait(Job(list(texts), purge, request_id, future))
        return await future

    async def _gather(self, first: Job) -> tuple[list[Job], Job | None]:
        """A batch starting with ``first``; the job that did not fit is returned for the next one."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch, size = [first], len(first.texts)
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(job.texts) > self.max_batch:
                return batch, job
            batch.append(job)
            size += len(job.texts)
        return batch, None

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: Job | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            batch, carry = await self._gather(first)
            self.queued_texts -= sum(len(j.texts) for j in batch)
            live = [j for j in batch if not j.future.done()]
            if not live:
                continue
            self.batches += 1
            try:
                results = await loop.run_in_executor(self._executor, self.work, live)
            except Exception as err:  # the batch's callers get the error, the loop goes on
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            for job, result in zip(live, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
