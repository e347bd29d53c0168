"""BatchEngine: pages in, results out, decoded together in up to `max_batch` slots (the API the CLI's
`--batch`, the server and the C API stand on).

Contract (stable; the scheduling behind it may change):
- `submit(image, options, on_text)` queues a page and returns a `concurrent.futures.Future` whose
  result is `(raw_text, GenerationResult)`; a page that fails sets the future's exception (the typed
  dsocr error). Thread-safe. A full queue raises QueueFullError at once (nothing is queued).
- `on_text(chunk)` streams the page's text; it is called on the engine's thread, so it must be quick
  (hand the chunk to another thread or event loop).
- `cancel(future)`: a queued page is dropped (future cancelled); a running page stops at its next step,
  frees its slot and resolves with stop_reason "cancelled".
- `start()` runs the loop on a background thread; without it, `run_until_idle()` drives it on the
  caller's thread. `close()` stops taking pages, finishes (or with cancel_pending=True, cancels)
  what is queued and running, and joins the thread.
- `stats()` -> EngineStats (queued, active slots, tokens generated, pages done) for progress bars
  and metrics.

This implementation runs one page at a time (max_batch is accepted and reported, slots are 1).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from .decoding import GenerationResult
from .errors import DsocrError, InputError
from .pipeline import Pipeline, RunOptions

CANCELLED = "cancelled"


class QueueFullError(DsocrError):
    """The engine's queue holds max_queue pages already; try again later."""


class EngineClosedError(DsocrError):
    """The engine was closed; it takes no more pages."""


@dataclass(frozen=True)
class EngineStats:
    queued: int
    active: int  # slots decoding now
    slots: int  # max_batch
    pages_done: int
    tokens_generated: int
    tokens_per_s: float  # generated tokens over the engine's busy time


@dataclass
class _Job:
    image: object
    options: RunOptions
    on_text: Callable[[str], None] | None
    future: Future = field(default_factory=Future)
    cancelled: bool = False


class _Cancel(Exception):
    pass


class BatchEngine:
    def __init__(self, pipeline: Pipeline, max_batch: int = 1, max_queue: int = 0):
        """max_queue: the most pages waiting (not yet in a slot); 0 = unbounded."""
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise InputError(f"max_batch={max_batch!r} must be an integer >= 1")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise InputError(f"max_queue={max_queue!r} must be an integer >= 0 (0: unbounded)")
        self.pipeline, self.max_batch, self.max_queue = pipeline, max_batch, max_queue
        self._queue: deque[_Job] = deque()
        self._running: list[_Job] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._done = self._tokens = 0
        self._busy_s = 0.0

    # -- the public contract ---------------------------------------------------------------------
    def submit(self, image, options: RunOptions = RunOptions(), on_text: Callable[[str], None] | None = None) -> Future:
        self.pipeline.mode(options.mode)  # a wrong mode fails here, not on the engine's thread
        job = _Job(image, options, on_text)
        with self._cv:
            if self._closed:
                raise EngineClosedError("the engine is closed; it takes no more pages")
            if self.max_queue and len(self._queue) >= self.max_queue:
                raise QueueFullError(f"{len(self._queue)} pages are queued (max_queue={self.max_queue}); try again later")
            self._queue.append(job)
            self._cv.notify_all()
        return job.future

    def cancel(self, future: Future) -> bool:
        """True when the page was found queued or running (it will not complete normally)."""
        with self._cv:
            for job in self._queue:
                if job.future is future:
                    self._queue.remove(job)
                    future.cancel()
                    return True
            for job in self._running:
                if job.future is future:
                    job.cancelled = True
                    return True
        return False

    def stats(self) -> EngineStats:
        with self._cv:
            rate = self._tokens / self._busy_s if self._busy_s > 0 else 0.0
            return EngineStats(len(self._queue), len(self._running), self.max_batch, self._done, self._tokens, rate)

    def start(self) -> "BatchEngine":
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="dsocr-engine", daemon=True)
                self._thread.start()
        return self

    def run_until_idle(self) -> None:
        """Drive the engine on this thread until nothing is queued or running."""
        while self.step():
            pass

    def close(self, cancel_pending: bool = False, timeout: float | None = None) -> None:
        with self._cv:
            self._closed = True
            if cancel_pending:
                while self._queue:
                    self._queue.popleft().future.cancel()
                for job in self._running:
                    job.cancelled = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        else:
            self.run_until_idle()

    def __enter__(self) -> "BatchEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close(cancel_pending=exc[0] is not None)

    # -- scheduling ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue and self._closed:
                    return
            self.step()

    def step(self) -> bool:
        """One scheduling iteration; False when there was nothing to do."""
        with self._cv:
            if not self._queue:
                return False
            job = self._queue.popleft()
            if not job.future.set_running_or_notify_cancel():
                return True
            self._running.append(job)
        t0 = time.perf_counter()
        try:
            raw, result = self.pipeline.generate(job.image, job.options, on_text=self._streamer(job))
            job.future.set_result((raw, result))
            n = len(result.ids)
        except _Cancel:
            job.future.set_result(("", GenerationResult(ids=[], stop_reason=CANCELLED, n_prompt=0)))
            n = 0
        except BaseException as e:  # noqa: BLE001 - the page's error goes to its future
            job.future.set_exception(e)
            n = 0
        with self._cv:
            self._running.remove(job)
            self._done += 1
            self._tokens += n
            self._busy_s += time.perf_counter() - t0
        return True

    @staticmethod
    def _streamer(job: _Job) -> Callable[[str], None]:
        def on_text(chunk: str) -> None:
            if job.cancelled:
                raise _Cancel
            if job.on_text is not None:
                job.on_text(chunk)
        return on_text
