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
