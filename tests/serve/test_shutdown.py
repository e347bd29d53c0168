"""SIGTERM to a `dsocr serve` subprocess: it stops accepting, finishes the in-flight request, exits 0."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from conftest import free_port, http_get
from test_server import data_url, messages

openai = pytest.importorskip("openai")


def test_sigterm_finishes_in_flight_requests_then_exits_0(demo_bundle, sample_page, tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "dsocr.runtime.cli", "serve", "--model", str(demo_bundle),
                             "--host", "127.0.0.1", "--port", str(port), "--grace-period", "120",
                             "--served-model-name", "demo"], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        while http_get(url + "/health")[0] != 200:
            assert proc.poll() is None and time.monotonic() - t0 < 180, "server did not become ready"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=180)
        page = data_url(open(sample_page, "rb").read())
        stream = client.chat.completions.create(model="demo", messages=messages(page),
                                                max_tokens=40, stream=True, stream_options={"include_usage": True},
                                                extra_body={"vllm_xargs": {"ngram_size": 0}})
        chunks = iter(stream)
        got = [next(chunks)]  # in flight now
        proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        while http_get(url + "/health", timeout=2)[0] is not None and time.monotonic() - t_term < 30:
            time.sleep(0.05)
        assert http_get(url + "/health", timeout=2)[0] is None  # no longer accepting connections
        got += list(chunks)  # ... but the request in flight runs to its end
        finish = [c.choices[0].finish_reason for c in got if c.choices and c.choices[0].finish_reason]
        assert finish == ["length"] and got[-1].usage.completion_tokens == 40
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.seek(0)
        print(log.read())
