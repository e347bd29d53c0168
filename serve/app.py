"""The ASGI app (FastAPI): /v1/chat/completions (plain and SSE), /v1/models, /health, /metrics.

Requests join the BatchEngine's running batch through `engine.submit`; the engine's queue bound
(max_queue) turns into 429; a client that disconnects (or a request past its timeout) has its page
cancelled, which frees its slot. The bundle loads on a background thread after the server starts:
/health answers 503 until it is loaded, then 200.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import uuid
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from dsocr.runtime.engine import CANCELLED, BatchEngine, EngineClosedError, QueueFullError
from dsocr.runtime.errors import DsocrError, InputError
from dsocr.runtime.postprocess import EOS_TEXT, render_markdown

from . import protocol
from .media import load_media
from .metrics import Metrics
from .options import ServeOptions

log = logging.getLogger("dsocr.serve")
Loader = Callable[[ServeOptions], BatchEngine]


class ApiError(DsocrError):
    """An HTTP error with an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None):
        super().__init__(message)
        self.status, self.type, self.code = status, type_, code


def error_status(e: Exception) -> tuple[int, str, str | None]:
    """A dsocr error -> (HTTP status, OpenAI error type, code)."""
    if isinstance(e, ApiError):
        return e.status, e.type, e.code
    if isinstance(e, QueueFullError):
        return 429, "rate_limit_error", "queue_full"
    if isinstance(e, EngineClosedError):
        return 503, "service_unavailable", "shutting_down"
    if isinstance(e, InputError):  # ImageError, PDFError, ModeError, CacheOverflowError ...
        return 400, "invalid_request_error", type(e).__name__
    return 500, "server_error", type(e).__name__


def load_engine(opts: ServeOptions) -> BatchEngine:
    """The default loader: one Pipeline over the bundle, one started BatchEngine."""
    from dsocr.runtime.pipeline import Pipeline

    pipe = Pipeline(opts.bundle, backend=opts.backend, device=opts.device, threads=opts.threads)
    return BatchEngine(pipe, max_batch=opts.batch, max_queue=opts.max_queue).start()


class TextCleaner:
    """Model text -> response text: the EOS string always dropped; with skip_special_tokens every
    special token's string dropped too. Applied per streamed chunk (a special token is emitted whole)."""

    def __init__(self, special: list[str]):
        self._eos = re.compile(re.escape(EOS_TEXT))
        alts = sorted(set(special) | {EOS_TEXT}, key=len, reverse=True)
        self._special = re.compile("|".join(re.escape(s) for s in alts))

    def __call__(self, text: str, skip_special: bool) -> str:
        return (self._special if skip_special else self._eos).sub("", text)


def special_strings(engine: BatchEngine) -> list[str]:
    import tokenizers

    pipe = engine.pipeline
    tok = tokenizers.Tokenizer.from_file(str(pipe.bundle_dir / pipe.manifest.tokenizer))
    return [t.content for t in tok.get_added_tokens_decoder().values() if t.special]


class State:
    def __init__(self, opts: ServeOptions, loader: Loader):
        self.opts, self.loader = opts, loader
        self.engine: BatchEngine | None = None
        self.cleaner: TextCleaner | None = None
        self.load_error: Exception | None = None
        self.on_load_error: Callable[[Exception], None] | None = None
        self.metrics = Metrics(lambda: self.engine.stats() if self.engine else None)

    def load(self) -> None:
        try:
            engine = self.loader(self.opts)
            self.cleaner = TextCleaner(special_strings(engine))
            self.engine = engine
            log.info("dsocr serve: %s loaded, serving as %r", self.opts.bundle, self.opts.model_name)
        except Exception as e:  # noqa: BLE001 - reported by /health and to the server
            log.error("dsocr serve: cannot load %s: %s: %s", self.opts.bundle, type(e).__name__, e)
            self.load_error = e
            if self.on_load_error is not None:
                self.on_load_error(e)

    def ready(self) -> BatchEngine:
        if self.engine is None:
            what = f"failed to load: {self.load_error}" if self.load_error else "is still loading"
            raise ApiError(503, f"the model {what}", "service_unavailable", "not_ready")
        return self.engine


def create_app(opts: ServeOptions, loader: Loader = load_engine) -> FastAPI:
    state = State(opts, loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, name="dsocr-load", daemon=True).start()
        yield
        if state.engine is not None:
            await run_in_threadpool(state.engine.close, True, 10.0)

    app = FastAPI(title="dsocr", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.dsocr = state

    @app.exception_handler(DsocrError)
    async def dsocr_error(request: Request, e: DsocrError):
        status, type_, code = error_status(e)
        if status >= 500 and status != 503:
            log.exception("request failed", exc_info=e)
        if request.url.path == "/v1/chat/completions":
            state.metrics.requests.labels(str(status)).inc()
        return JSONResponse(protocol.error_body(str(e), type_, code), status_code=status)

    @app.get("/health")
    async def health():
        if state.engine is not None:
            return {"status": "ok", "model": opts.model_name}
        body = {"status": "error", "message": str(state.load_error)} if state.load_error else {"status": "loading"}
        return JSONResponse(body, status_code=503)

    @app.get("/metrics")
    async def metrics():
        data, ctype = state.metrics.render()
        return Response(data, media_type=ctype)

    @app.get("/v1/models")
    async def models():
        engine = state.ready()
        return {"object": "list", "data": [{
            "id": opts.model_name, "object": "model", "created": int(time.time()), "owned_by": "dsocr",
            "max_model_len": engine.pipeline.manifest.kv.max_seq_len, "modes": engine.pipeline.manifest.modes}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        t0 = time.perf_counter()
        engine = state.ready()
        req = parse_request(await read_body(request, opts.max_body_bytes))
        if req.model not in (None, opts.model_name):
            raise ApiError(404, f"the model {req.model!r} does not exist; this server serves {opts.model_name!r}",
                           "invalid_request_error", "model_not_found")
        url, run_opts = protocol.run_options(req)
        image = await run_in_threadpool(load_media, url, opts)
        call = _Call(state, engine, req, image, t0)
        call.submit(run_opts)
        if req.stream:
            return StreamingResponse(call.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await call.complete(request)

    return app


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {int(declared):,} bytes, over the limit of {limit:,}",
                       "invalid_request_error", "body_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"the request body is over the limit of {limit:,} bytes",
                           "invalid_request_error", "body_too_large")
    return bytes(body)


def parse_request(body: bytes) -> protocol.ChatCompletionRequest:
    try:
        return protocol.ChatCompletionRequest.model_validate_json(body)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                             for err in e.errors(include_url=False)[:5])
        raise InputError(f"invalid request: {problems}") from None


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class _ClientGone(Exception):
    pass


class _Call:
    """One chat completion in flight: the engine future, its streamed text, timing and metrics."""

    def __init__(self, state: State, engine: BatchEngine, req: protocol.ChatCompletionRequest, image, t0: float):
        self.state, self.engine, self.req, self.image, self.t0 = state, engine, req, image, t0
        self.rid, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + state.opts.request_timeout_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.first_text: float | None = None
        self.future: Future | None = None

    def submit(self, run_opts) -> None:
        stream = self.req.stream

        def on_text(chunk: str) -> None:  # the engine's thread
            if self.first_text is None:
                self.first_text = time.perf_counter()
            if stream:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, chunk)

        self.future = self.engine.submit(self.image, run_opts, on_text=on_text)

    def _cancel(self) -> None:
        if self.future is not None and not self.future.done():
            self.engine.cancel(self.future)

    def _finish(self, status: int) -> None:
        m = self.state.metrics
        m.requests.labels(str(status)).inc()
        if status == 200:
            m.latency.observe(time.perf_counter() - self.t0)
            if self.first_text is not None:
                m.ttft.observe(self.first_text - self.t0)

    def _result(self, afut: asyncio.Future):
        if afut.cancelled():
            raise EngineClosedError("the server is shutting down; the request was cancelled")
        raw, result = afut.result()
        if result.stop_reason == CANCELLED:
            raise EngineClosedError("the server is shutting down; the request was cancelled")
        return raw, result

    def _extension(self, raw: str, result) -> dict[str, Any] | None:
        if not self.req.extension.return_boxes:
            return None
        page = render_markdown(raw, self.image)
        return {"boxes": [b.to_dict() for b in page.boxes], "width": page.width, "height": page.height,
                "markdown": page.markdown, "stop_reason": str(result.stop_reason)}

    async def complete(self, request: Request) -> JSONResponse:
        afut = asyncio.wrap_future(self.future)
        afut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved here or dropped
        try:
            while not afut.done():
                remaining = self.deadline - self.loop.time()
                if remaining <= 0:
                    raise ApiError(504, f"the request took longer than {self.state.opts.request_timeout_s} s",
                                   "timeout", "timeout")
                await asyncio.wait({afut}, timeout=min(0.2, remaining))
                if not afut.done() and await request.is_disconnected():
                    raise _ClientGone
            raw, result = self._result(afut)
        except _ClientGone:
            self._cancel()
            self._finish(499)
            return JSONResponse(protocol.error_body("client closed the request", "client_gone"), status_code=499)
        finally:
            self._cancel()
        content = self.state.cleaner(raw, self.req.skip_special_tokens)
        body = protocol.completion(self.rid, self.created, self.state.opts.model_name, content, result,
                                   self._extension(raw, result))
        self._finish(200)
        return JSONResponse(body)

    async def events(self):
        """SSE: a role chunk, content chunks, a finish chunk, the usage chunk if asked, [DONE]."""
        name, status = self.state.opts.model_name, 499
        afut = asyncio.wrap_future(self.future)
        afut.add_done_callback(lambda f: self.queue.put_nowait(None))
        try:
            yield _sse(protocol.chunk(self.rid, self.created, name, {"role": "assistant", "content": ""}))
            while True:
                remaining = self.deadline - self.loop.time()
                if remaining <= 0:
                    raise ApiError(504, f"the request took longer than {self.state.opts.request_timeout_s} s",
                                   "timeout", "timeout")
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout=remaining)
                except asyncio.TimeoutError:
                    continue
                if item is None:
                    break
                text = self.state.cleaner(item, self.req.skip_special_tokens)
                if text:
                    yield _sse(protocol.chunk(self.rid, self.created, name, {"content": text}))
            raw, result = self._result(afut)
            ext = self._extension(raw, result)
            final = protocol.chunk(self.rid, self.created, name, {}, protocol.finish_reason(result))
            if ext is not None:
                final["dsocr"] = ext
            yield _sse(final)
            if self.req.include_usage:
                yield _sse(protocol.chunk(self.rid, self.created, name, usage_=protocol.usage(result)))
            yield _sse("[DONE]")
            status = 200
        except Exception as e:  # an error after the 200 header: an error event, as OpenAI's API sends
            status, type_, code = error_status(e)
            yield _sse(protocol.error_body(str(e), type_, code))
        finally:  # also on disconnect (the response task is cancelled)
            self._cancel()
            self._finish(status)
