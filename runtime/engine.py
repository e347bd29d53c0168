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

Scheduling (continuous batching): one BundleRunner with `max_batch` slots over one preallocated KV
cache. Each `step()` first fills free slots from the queue (the new pages' views go through batched
vision calls, at most `vision_batch` views a call; then each page is prefilled into its slot), then
advances every active slot by one token in one decoder pass. A page that ends (EOS, max tokens, loop,
cache full, cancelled, an error) frees its slot at once and the next queued page takes it while the
others keep decoding. Each page keeps its own decoding.Generation (n-gram filter, stop criteria) and
TextStreamer; with max_batch 1 the engine decodes through the pipeline's own runner (slot 0, the one
`Pipeline.generate` uses).
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from .decoding import Generation, GenerationResult, StopReason, TextStreamer
from .errors import DsocrError, InputError
from .pipeline import Pipeline, RunOptions
from .runner import BundleRunner

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
    # set when the page takes a slot:
    slot: int = -1
    gen: Generation | None = None
    streamer: TextStreamer | None = None
    n_prompt: int = 0
    token: int | None = None  # the id to feed back next


class BatchEngine:
    def __init__(self, pipeline: Pipeline, max_batch: int = 1, max_queue: int = 0, vision_batch: int = 8,
                 kv_policy: str = "auto"):
        """max_queue: the most pages waiting (not yet in a slot); 0 = unbounded. vision_batch: the
        most views one vision call carries. kv_policy: how a pass binds the past (kv_cache.POLICIES)."""
        for name, v, low in (("max_batch", max_batch, 1), ("max_queue", max_queue, 0), ("vision_batch", vision_batch, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InputError(f"{name}={v!r} must be an integer >= {low}" + (" (0: unbounded)" if low == 0 else ""))
        self.pipeline, self.max_batch, self.max_queue = pipeline, max_batch, max_queue
        self.vision_batch = vision_batch
        if max_batch == 1 and kv_policy == "auto":
            self.runner = pipeline.runner  # batch 1: the pipeline's own slot
        else:
            self.runner = BundleRunner(pipeline.backend, pipeline.runner.max_seq_len, slots=max_batch, policy=kv_policy)
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
                while not self._queue and not self._running and not self._closed:
                    self._cv.wait()
                if not self._queue and not self._running and self._closed:
                    return
            self.step()

    def step(self) -> bool:
        """One scheduling iteration (fill free slots, then one decoder pass); False when idle."""
        t0 = time.perf_counter()
        admitted = self._admit()
        stepped = self._advance()
        with self._cv:
            self._busy_s += time.perf_counter() - t0
        return admitted or stepped

    def _admit(self) -> bool:
        """Move queued pages into free slots: batched vision, then one prefill per page."""
        with self._cv:
            used = {j.slot for j in self._running}
            free = [s for s in range(self.max_batch) if s not in used]
            jobs = []
            while self._queue and len(jobs) < len(free):
                job = self._queue.popleft()
                if job.future.set_running_or_notify_cancel():
                    job.slot = free[len(jobs)]
                    jobs.append(job)
            self._running += jobs
        if not jobs:
            return False
        pages = self.pipeline.prepare_many([j.image for j in jobs], [j.options for j in jobs], self.vision_batch)
        for job, page in zip(jobs, pages):
            try:
                if isinstance(page, BaseException):
                    raise page
                job.streamer = TextStreamer(self.pipeline.tokenizer.decode, job.on_text) if job.on_text else None
                job.gen = Generation(page.generation, page.eos_ids, job.streamer.put if job.streamer else None)
                job.n_prompt = int(page.embeds.shape[0])
                job.token = job.gen.advance(self.runner.prefill_slot(job.slot, page.embeds))
                self._count(1)
            except BaseException as e:  # noqa: BLE001 - the page's error goes to its future
                self._finish(job, error=e)
                continue
            if job.token is None:
                self._finish(job)
        return True

    def _advance(self) -> bool:
        """One decoder pass over every active slot that has an id to feed back."""
        with self._cv:
            active = [j for j in self._running if j.gen is not None]
        live = []
        for job in active:
            if job.cancelled:
                job.gen.end(CANCELLED)
                self._finish(job)
            elif self.runner.length(job.slot) >= self.runner.max_seq_len:
                job.gen.end(StopReason.CACHE_FULL)
                self._finish(job)
            else:
                live.append(job)
        if not live:
            return bool(active)
        try:
            logits = self.runner.step_slots([j.slot for j in live], [j.token for j in live])  # [n, V]
        except BaseException as e:  # noqa: BLE001 - a failed pass fails the pages in it
            for job in live:
                self._finish(job, error=e)
            return True
        self._count(len(live))
        for job, row in zip(live, logits):
            try:
                job.token = job.gen.advance(row)
            except BaseException as e:  # noqa: BLE001 (an on_text callback that raised)
                self._finish(job, error=e)
                continue
            if job.token is None:
                self._finish(job)
        return True

    def _count(self, tokens: int) -> None:
        with self._cv:
            self._tokens += tokens

    def _finish(self, job: _Job, error: BaseException | None = None) -> None:
        """Resolve the page's future and free its slot."""
        if error is not None:
            job.future.set_exception(error)
        elif job.gen.reason == CANCELLED:
            job.future.set_result(("", GenerationResult(ids=[], stop_reason=CANCELLED, n_prompt=job.n_prompt)))
        else:
            try:
                if job.streamer is not None:
                    job.streamer.end()
                result = job.gen.result(job.n_prompt)
                job.future.set_result((self.pipeline.tokenizer.decode(result.ids), result))
            except BaseException as e:  # noqa: BLE001
                job.future.set_exception(e)
        if job.slot >= 0:
            self.runner.free(job.slot)
        with self._cv:
            self._running.remove(job)
            self._done += 1


# -- sizing ----------------------------------------------------------------------------------------
MAX_DEFAULT_BATCH = 16
KV_MEMORY_SHARE = 0.25  # the part of available memory the default batch may give to the KV cache


def kv_bytes_per_slot(manifest, max_seq_len: int | None = None) -> int:
    """Bytes one slot's K and V take over all layers at the cache's capacity."""
    from .kv_cache import KVCache

    kv = manifest.kv
    seq = kv.max_seq_len if max_seq_len is None else min(int(max_seq_len), kv.max_seq_len)
    return KVCache.bytes_per_slot(kv.num_layers, kv.num_heads, kv.head_dim, seq, kv.dtype)


def available_memory() -> int | None:
    """Bytes of memory available now (Linux /proc/meminfo MemAvailable, else os.sysconf), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def default_batch(manifest, max_seq_len: int | None = None, available: int | None = None) -> int:
    """Slots to decode together by default: as many KV slots as KV_MEMORY_SHARE of the available
    memory holds, 1..MAX_DEFAULT_BATCH (1 when the available memory is unknown)."""
    available = available_memory() if available is None else available
    if not available:
        return 1
    per_slot = max(kv_bytes_per_slot(manifest, max_seq_len), 1)
    return int(max(1, min(MAX_DEFAULT_BATCH, available * KV_MEMORY_SHARE // per_slot)))


# -- feeding run_batch -------------------------------------------------------------------------------
class LookaheadOCR:
    """An `ocr_fn(page) -> PageResult` for batch.run_batch that keeps the engine's slots busy: before
    answering a page it submits up to `window` of the pages expected next (`upcoming`: loaders, in
    the order run_batch will ask). A page is matched to its submission by its pixels, so a page that
    was not expected (or was skipped) is still answered correctly, just without look-ahead."""

    def __init__(self, engine: "BatchEngine", options: RunOptions, upcoming, window: int | None = None):
        self.engine, self.options = engine, options
        self.upcoming = iter(upcoming)  # callables -> PIL image (raising for pages that cannot be read)
        self.window = window or 2 * engine.max_batch
        self.pending: deque[tuple[bytes, Future]] = deque()

    @staticmethod
    def fingerprint(image) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{image.mode}{image.size}".encode())
        h.update(image.tobytes())
        return h.digest()

    def _fill(self) -> None:
        while len(self.pending) < self.window:
            load = next(self.upcoming, None)
            if load is None:
                return
            try:
                page = load()
            except Exception:  # noqa: BLE001 - run_batch loads it again and records the error
                continue
            self.pending.append((self.fingerprint(page), self.engine.submit(page, self.options)))

    def __call__(self, page):
        from .postprocess import render_markdown

        self._fill()
        key, future = self.fingerprint(page), None
        while self.pending:
            k, f = self.pending.popleft()
            if k == key:
                future = f
                break
            self.engine.cancel(f)  # expected but skipped by run_batch
        if future is None:
            future = self.engine.submit(page, self.options)
        self._fill()
        raw, result = future.result()
        return render_markdown(raw, page).with_generation(result)

    def status(self) -> str:
        st = self.engine.stats()
        return f"{st.tokens_per_s:.1f} tok/s, {st.active}/{st.slots} slots"
