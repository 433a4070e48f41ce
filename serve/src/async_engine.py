"""The engine for asyncio servers: one background thread steps the batch, coroutines
submit requests and read their chunks.

    engine = AsyncEngine(SpeculativeGenerator(target, draft, tokenizer=tok).engine(16))
    engine.start()
    request = engine.submit(ids, max_new_tokens=64, temperature=0.7)   # ValueError, QueueFull
    async for chunk in engine.stream(request):                          # StreamChunk per step
        ...
    engine.close()

Requests submitted while a batch runs join it at the next step (continuous
batching). A consumer that stops reading (a client that went away, a timeout,
a cancelled task) cancels its request, which frees its row at the next step.

Which thread steps matters on CPUs: PyTorch runs about 20% slower (bf16, measured
on 2 cores) in a thread other than the one that first ran it, which has the warm
OpenMP/oneDNN pool. ``start()`` steps in a new thread, which is simplest to embed;
``run_forever()`` steps in the calling thread, so a server can load the models and
step in its main thread and run its event loop in another (``specdistill serve``
does that).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator

from specdistill.serve.scheduler import Request, SpecEngine, StreamChunk

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More requests are waiting than ``max_queue``; try again later."""


class EngineError(RuntimeError):
    """The request failed inside a decode step (the engine goes on with the others)."""


class AsyncEngine:
    def __init__(self, engine: SpecEngine, max_queue: int = 64):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.engine, self.max_queue = engine, max_queue
        self._listeners: dict[Request, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._swaps: list[tuple[tuple, concurrent.futures.Future]] = []
        self.steps = 0  # decode steps run (for health checks and metrics)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="specdistill-engine", daemon=True)
            self._thread.start()

    def run_forever(self) -> None:
        """Step in the calling thread until ``close()`` (from another thread)."""
        self._loop()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._thread = None
        for _, future in self._swaps:
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the engine closed before the draft was swapped"))
        self._swaps.clear()

    @property
    def num_running(self) -> int:
        return len(self.engine.running)

    @property
    def num_waiting(self) -> int:
        return self.engine.num_waiting

    def submit(self, input_ids, **params) -> Request:
        """Check and queue a request (``SpecEngine.add``'s arguments). Call from the event
        loop that will read it. Raises ValueError for a bad request, QueueFull when full."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        if self.engine.num_waiting >= self.max_queue:
            raise QueueFull(f"{self.engine.num_waiting} requests are waiting (max_queue={self.max_queue})")
        loop = asyncio.get_running_loop()
        request = self.engine.make_request(input_ids, **params)
        self._listeners[request] = (loop, asyncio.Queue())  # before the engine thread can see it
        self.engine.enqueue(request)
        self._wake.set()
        return request

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        """The request's chunks as the steps produce them; the last has a finish reason.
        Raises EngineError if the request failed in a step. Leaving early cancels it."""
        _, queue = self._listeners[request]
        try:
            while True:
                chunk = await queue.get()
                if chunk.finish_reason == "error":
                    raise EngineError(f"decoding failed: {request.error!r}") from request.error
                yield chunk
                if chunk.finish_reason:
                    return
        finally:
            self.cancel(request)

    def cancel(self, request: Request) -> None:
        """Stop a request (also one nobody streams): its row is freed at the next step."""
        self._listeners.pop(request, None)
        if not request.finished:
            self.engine.cancel(request)
            self._wake.set()

    def swap_draft(self, draft, name: str, draft_vocab=None) -> concurrent.futures.Future:
        """Swap the draft between two steps (``SpecEngine.swap_draft``), from any thread. The future
        gives the new ``DraftVersion``, or the ValueError that left the old draft serving."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._swaps.append(((draft, name, draft_vocab), future))
        self._wake.set()
        return future

    def _swap(self) -> None:
        while self._swaps:
            arguments, future = self._swaps.pop(0)
            if not future.set_running_or_notify_cancel():  # its caller gave up (a timeout): do not swap
                continue
            try:
                future.set_result(self.engine.swap_draft(*arguments))
            except Exception as err:  # a bad draft, or no memory for its cache: the old one serves on
                future.set_exception(err)

    def _loop(self) -> None:
        while not self._closed:
            self._swap()
            if not self.engine.has_work():
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                updates = self.engine.step()
            except Exception:  # the engine fails requests itself; this is a last resort
                log.exception("engine step raised")
                continue
            self.steps += 1
            for request, chunk in updates:
                listener = self._listeners.get(request)
                if listener is None:
                    continue
                loop, queue = listener
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
                except RuntimeError:  # that event loop is closed: nobody is listening
                    pass
