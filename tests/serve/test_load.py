"""Many clients at once, the bounded queue (429), disconnects that free the slot, readiness."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import pytest
from PIL import Image, ImageOps

from conftest import ThreadServer, free_port, http_get
from test_server import MODEL, data_url, messages, png_bytes

openai = pytest.importorskip("openai")

from dsocr.runtime.decoding import GenerationOptions  # noqa: E402
from dsocr.runtime.pipeline import Pipeline, RunOptions  # noqa: E402
from dsocr.runtime.postprocess import EOS_TEXT  # noqa: E402

CLIENTS, REQUESTS = 32, 4


def metric(url: str, name: str) -> float:
    _, body = http_get(url + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def pages(sample_page):
    page = Image.open(sample_page).convert("RGB")
    w, h = page.size
    return [page, page.rotate(90, expand=True), page.crop((0, 0, w, h // 2)), ImageOps.grayscale(page).convert("RGB")]


def test_32_concurrent_clients_get_the_answers_of_requests_run_alone(server, client, demo_bundle, pages):
    pipe = Pipeline(demo_bundle)
    expected = {}
    for p, page in enumerate(pages):
        for n in (1, 2, 3, 4):
            raw, res = pipe.generate(page, RunOptions(prompt="<image>\nFree OCR.",
                                                      generation=GenerationOptions(max_new_tokens=n)))
            expected[p, n] = (raw.replace(EOS_TEXT, ""), len(res.ids))
    urls = [data_url(png_bytes(page)) for page in pages]
    ok_before = metric(server.url, 'dsocr_requests_total{status="200"}')

    def one_client(i: int) -> list:
        out = []
        for k in range(REQUESTS):
            p, n = (i + k) % len(pages), 1 + (i * 3 + k) % 4
            r = client.chat.completions.create(model=MODEL, messages=messages(urls[p]), max_tokens=n,
                                               extra_body={"skip_special_tokens": False})
            out.append(((p, n), r))
        return out

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(one_client, i) for i in range(CLIENTS)]
        done, pending = wait(futures, timeout=900)
    assert not pending, f"{len(pending)} clients did not finish in time"
    answers = [a for f in futures for a in f.result()]
    assert len(answers) == CLIENTS * REQUESTS
    assert len({r.id for _, r in answers}) == CLIENTS * REQUESTS  # one distinct completion per request
    for key, r in answers:
        assert len(r.choices) == 1 and r.choices[0].finish_reason in {"stop", "length"}
        assert (r.choices[0].message.content, r.usage.completion_tokens) == expected[key], key
    assert metric(server.url, 'dsocr_requests_total{status="200"}') - ok_before == CLIENTS * REQUESTS


def test_not_ready_then_queue_full_429_and_disconnects_free_the_slot(demo_bundle, sample_page):
    from dsocr.serve.options import ServeOptions

    gate = threading.Event()

    def gated(opts):  # pages that never end by themselves (the demo's stop at its loop guard within a second)
        from conftest import ScriptedPipeline, endless
        from dsocr.runtime.engine import BatchEngine

        gate.wait(120)
        return BatchEngine(ScriptedPipeline(opts.bundle, endless(), delay=0.02), max_queue=opts.max_queue).start()

    srv = ThreadServer(ServeOptions(bundle=demo_bundle, port=free_port(), max_queue=1,
                                    served_model_name=MODEL), loader=gated).start(wait_ready=False)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=120)
        page = data_url(open(sample_page, "rb").read())
        status, body = http_get(srv.url + "/health")
        assert (status, b"loading" in body) == (503, True)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model=MODEL, messages=messages(page), max_tokens=2)
        assert err.value.status_code == 503 and err.value.body["code"] == "not_ready"
        gate.set()
        srv.start_wait()

        long = client.chat.completions.create(model=MODEL, messages=messages(page), max_tokens=1000, stream=True)
        first = next(iter(long))  # the long request holds the only slot
        assert first.choices[0].delta.role == "assistant"
        queued = ThreadPoolExecutor(1).submit(client.chat.completions.create, model=MODEL,
                                              messages=messages(page), max_tokens=2)
        t0 = time.monotonic()
        while metric(srv.url, "dsocr_queue_depth") < 1 and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model=MODEL, messages=messages(page), max_tokens=2)
        assert err.value.status_code == 429 and err.value.body["code"] == "queue_full"
        assert "max_queue=1" in err.value.body["message"]

        long.close()  # the client goes away: its page is cancelled and the queued one runs
        t_close = time.monotonic()
        r = queued.result(timeout=120)
        assert r.choices[0].finish_reason in {"stop", "length"}
        assert time.monotonic() - t_close < 30  # the 1000-token page would have needed far longer
        impatient = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=2)
        with pytest.raises(openai.APITimeoutError):  # a non-streamed request whose client hangs up
            impatient.chat.completions.create(model=MODEL, messages=messages(page), max_tokens=1000)
        t0 = time.monotonic()
        while metric(srv.url, 'dsocr_requests_total{status="499"}') < 2 and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        assert metric(srv.url, 'dsocr_requests_total{status="499"}') == 2
        while metric(srv.url, "dsocr_active_slots") > 0 and time.monotonic() - t0 < 30:
            time.sleep(0.05)  # the cancelled page stops at its next decode step
        assert metric(srv.url, "dsocr_active_slots") == 0 and metric(srv.url, "dsocr_queue_depth") == 0
        assert metric(srv.url, "dsocr_generated_tokens_total") < 900  # neither 1000-token page ran to its end
    finally:
        gate.set()
        srv.stop()
