"""return_boxes: grounded model text -> boxes in page pixels, in plain and streamed responses.

The demo checkpoint never writes grounding tags, so this server's pipeline decodes a fixed grounded
text (a scripted slot runner: the bundle, the engine, the server and the post-processing are real)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ScriptedPipeline, ThreadServer, endless, free_port
from test_server import data_url, messages

openai = pytest.importorskip("openai")

from dsocr.runtime.engine import BatchEngine  # noqa: E402

GROUNDED = "<|ref|>title<|/ref|><|det|>[[100, 50, 900, 150]]<|/det|>\n# Hello\n"


def GroundedPipeline(bundle):
    """A real Pipeline whose decoding spells GROUNDED, then EOS."""
    from dsocr.runtime.pipeline import BundleAssets

    tok = BundleAssets.load(bundle).tokenizer
    ids = tok.encode(GROUNDED) + [tok.special.eos]
    return ScriptedPipeline(bundle, lambda fed: ids[min(len(fed), len(ids) - 1)])


@pytest.fixture(scope="module")
def grounded(demo_bundle):
    from dsocr.serve.options import ServeOptions

    srv = ThreadServer(ServeOptions(bundle=demo_bundle, port=free_port(), served_model_name="g"),
                       loader=lambda opts: BatchEngine(GroundedPipeline(opts.bundle)).start()).start()
    yield openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
    srv.stop()


def test_boxes_in_page_pixels(grounded, sample_page):
    url = data_url(Path(sample_page).read_bytes())  # 794 x 1123 pixels
    r = grounded.chat.completions.create(model="g", messages=messages(url), max_tokens=64,
                                         extra_body={"skip_special_tokens": False, "dsocr": {"return_boxes": True}})
    ext = r.model_extra["dsocr"]
    # x = int(v / 999 * 794), y = int(v / 999 * 1123)
    assert ext["boxes"] == [{"label": "title", "bbox": [79, 56, 715, 168]}]
    assert (ext["width"], ext["height"]) == (794, 1123) and ext["markdown"] == "\n# Hello\n".lstrip("\n")
    assert r.choices[0].message.content == GROUNDED and r.choices[0].finish_reason == "stop"
    chunks = list(grounded.chat.completions.create(model="g", messages=messages(url), stream=True,
                                                   extra_body={"skip_special_tokens": False,
                                                               "dsocr": {"return_boxes": True}}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == GROUNDED
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
    assert final.model_extra["dsocr"]["boxes"] == ext["boxes"]
    plain = grounded.chat.completions.create(model="g", messages=messages(url))
    assert "dsocr" not in (plain.model_extra or {})  # only when asked


def EndlessPipeline(bundle):
    """A real Pipeline whose page never ends (a step every 20 ms), until the engine cancels it."""
    return ScriptedPipeline(bundle, endless(), delay=0.02)


def test_request_timeout_is_504_and_frees_the_slot(demo_bundle, sample_page):
    from conftest import http_get
    from dsocr.serve.options import ServeOptions

    srv = ThreadServer(ServeOptions(bundle=demo_bundle, port=free_port(), served_model_name="g", request_timeout_s=1),
                       loader=lambda opts: BatchEngine(EndlessPipeline(opts.bundle)).start()).start()
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
        url = data_url(Path(sample_page).read_bytes())
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="g", messages=messages(url))
        assert err.value.status_code == 504 and err.value.body["code"] == "timeout"
        with pytest.raises(openai.APIError, match="longer than 1 s"):  # the stream's error event
            list(client.chat.completions.create(model="g", messages=messages(url), stream=True))
        import time

        t0 = time.monotonic()
        while srv.state.engine.stats().active and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert srv.state.engine.stats().active == 0
        assert b'dsocr_requests_total{status="504"} 2.0' in http_get(srv.url + "/metrics")[1]
    finally:
        srv.stop()
