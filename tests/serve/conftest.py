"""A dsocr server on 127.0.0.1 (a free port) in a thread of the test process, over the demo bundle.
Nothing heavy is imported here: the test modules skip themselves without the serve extra or openai."""
from __future__ import annotations

import socket
import threading
import time

import pytest


def http_get(url: str, timeout: float = 10) -> tuple[int | None, bytes]:
    """(status, body) of a GET; (None, b"") when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, b""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn.Server on a background thread; `url` once /health answers 200."""

    def __init__(self, opts, loader=None):
        import uvicorn

        from dsocr.serve.app import create_app, load_engine

        self.opts = opts
        self.app = create_app(opts, loader or load_engine)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=opts.port, log_level="warning",
                                                    timeout_graceful_shutdown=5, access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{opts.port}"

    @property
    def state(self):
        return self.app.state.dsocr

    def start(self, wait_ready: bool = True, timeout: float = 120) -> "ThreadServer":
        self.thread.start()
        return self.start_wait(wait_ready, timeout)

    def start_wait(self, wait_ready: bool = True, timeout: float = 120) -> "ThreadServer":
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            status, _ = http_get(self.url + "/health")
            if status == 200 or (status is not None and not wait_ready):
                return self
            time.sleep(0.1)
        raise TimeoutError(f"server at {self.url} not ready after {timeout} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


@pytest.fixture(scope="session")
def serve_options(demo_bundle, tmp_path_factory):
    from dsocr.serve.options import ServeOptions

    media = tmp_path_factory.mktemp("media")
    return ServeOptions(bundle=demo_bundle, port=free_port(), max_queue=256, served_model_name="dsocr-demo",
                        allowed_local_media_path=media, max_body_bytes=4 * 2**20, request_timeout_s=300)


@pytest.fixture(scope="session")
def server(serve_options):
    srv = ThreadServer(serve_options).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)


class ScriptedSlots:
    """A slot runner without a model (what BatchEngine drives: prefill_slot, step_slots, length, free):
    the logits of a slot are one-hot at `next_id(ids fed since its prefill)`; each step waits `delay`
    seconds. Put on a real Pipeline as its `runner`, it makes the engine, the server and the
    post-processing real while the text is scripted."""

    def __init__(self, vocab: int, next_id, delay: float = 0.0, max_seq_len: int = 1 << 20):
        self.vocab, self.next_id, self.delay, self.max_seq_len = vocab, next_id, delay, max_seq_len
        self._fed: dict[int, list[int]] = {}
        self._len: dict[int, int] = {}

    def length(self, slot: int) -> int:
        return self._len.get(slot, 0)

    def free(self, slot: int) -> None:
        self._fed.pop(slot, None)
        self._len.pop(slot, None)

    def _logits(self, slot: int):
        import numpy as np

        out = np.full(self.vocab, -1e4, np.float32)
        out[self.next_id(self._fed[slot])] = 0.0
        return out

    def prefill_slot(self, slot: int, embeds):
        self._fed[slot], self._len[slot] = [], len(embeds)
        return self._logits(slot)

    def step_slots(self, slots, token_ids):
        import numpy as np

        time.sleep(self.delay)
        rows = []
        for s, t in zip(slots, token_ids):
            self._fed[s].append(int(t))
            self._len[s] += 1
            rows.append(self._logits(s))
        return np.stack(rows)


class ScriptedPipeline:
    """A real Pipeline (bundle, preprocessing, vision, tokenizer) whose decoding is a ScriptedSlots."""

    def __init__(self, bundle, next_id, delay: float = 0.0):
        from dsocr.runtime.pipeline import Pipeline

        self._pipe = Pipeline(bundle)
        self.runner = ScriptedSlots(self._pipe.manifest.vocab_size, next_id, delay)

    def __getattr__(self, name):
        return getattr(self._pipe, name)


def endless(vocab: int = 1000, seed: int = 0):
    """next_id for a page that never ends: varied ids (no EOS, nothing the loop guard sees repeat)."""
    import random

    rng = random.Random(seed)
    return lambda fed: rng.randrange(10, vocab)
