"""dsocr serve through the official `openai` client against a server on 127.0.0.1 over the demo bundle:
answers equal the runtime's own (Pipeline.generate run alone), streaming, vLLM's fields, bad requests."""
from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from conftest import http_get

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from dsocr.runtime.decoding import GenerationOptions  # noqa: E402
from dsocr.runtime.pipeline import Pipeline, RunOptions  # noqa: E402
from dsocr.runtime.postprocess import EOS_TEXT  # noqa: E402
from dsocr.runtime.preprocess import load_image  # noqa: E402

MODEL = "dsocr-demo"


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny IDAT: decodable only partway."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buf, format="GIF")
    return buf.getvalue()


def messages(url: str, text: str | None = "Free OCR.") -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def alone(demo_bundle):
    """The runtime itself, one request at a time: the expected answers."""
    pipe = Pipeline(demo_bundle)

    def run(image, prompt="<image>\nFree OCR.", **gen):
        raw, result = pipe.generate(load_image(image) if not isinstance(image, Image.Image) else image,
                                    RunOptions(prompt=prompt, generation=GenerationOptions(**gen)))
        return raw, result

    run.pipe = pipe
    return run


@pytest.fixture(scope="module")
def page_png(sample_page) -> bytes:
    return Path(sample_page).read_bytes()


def test_plain_completion_equals_the_runtime(client, alone, page_png):
    raw, result = alone(page_png, max_new_tokens=6)
    r = client.chat.completions.create(model=MODEL, messages=messages(data_url(page_png)), max_tokens=6,
                                       temperature=0, extra_body={"skip_special_tokens": False})
    assert r.choices[0].message.content == raw.replace(EOS_TEXT, "")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == {"eos": "stop", "max_tokens": "length"}[result.stop_reason]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (result.n_prompt, len(result.ids))
    assert r.usage.total_tokens == result.n_prompt + len(result.ids)
    assert r.model == MODEL and r.object == "chat.completion"


def test_template_name_and_official_prompt_text_are_the_same_request(client, page_png):
    urls = data_url(page_png)
    by_name = client.chat.completions.create(model=MODEL, messages=messages(urls, "free"), max_tokens=4)
    by_text = client.chat.completions.create(model=MODEL, messages=messages(urls, "<image>\nFree OCR."), max_tokens=4)
    document = client.chat.completions.create(model=MODEL, messages=messages(urls, None), max_tokens=4)
    assert by_name.choices[0].message.content == by_text.choices[0].message.content
    assert by_name.usage.prompt_tokens == by_text.usage.prompt_tokens
    assert document.usage.prompt_tokens != by_name.usage.prompt_tokens  # no text: the `document` template


def test_streamed_completion_equals_the_plain_one(client, page_png):
    kw = dict(model=MODEL, messages=messages(data_url(page_png)), max_tokens=6,
              extra_body={"skip_special_tokens": False})
    plain = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    no_usage = list(client.chat.completions.create(stream=True, **kw))
    assert all(c.usage is None for c in no_usage)


def test_vllm_fields_reach_the_decoder(client, alone, page_png):
    xargs = {"ngram_size": 3, "window_size": 10, "whitelist_token_ids": [5]}
    raw, result = alone(page_png, max_new_tokens=8, ngram_size=3, ngram_window=10, whitelist=frozenset({5}))
    default_raw, _ = alone(page_png, max_new_tokens=8)
    assert raw != default_raw  # the n-gram ban changes this page's text, so the check below can fail
    r = client.chat.completions.create(model=MODEL, messages=messages(data_url(page_png)), max_tokens=8, temperature=0,
                                       extra_body={"skip_special_tokens": False, "vllm_xargs": xargs})
    assert r.choices[0].message.content == raw.replace(EOS_TEXT, "")
    skipped = client.chat.completions.create(model=MODEL, messages=messages(data_url(page_png)), max_tokens=8,
                                             extra_body={"vllm_xargs": xargs})  # skip_special_tokens defaults to true
    assert skipped.choices[0].message.content == alone.pipe.tokenizer.decode(result.ids, skip_special=True)


def test_local_file_url_under_the_allowed_path(client, serve_options, sample_page, page_png):
    local = serve_options.allowed_local_media_path / "page.png"
    shutil.copy(sample_page, local)
    by_file = client.chat.completions.create(model=MODEL, messages=messages(local.as_uri()), max_tokens=4)
    by_data = client.chat.completions.create(model=MODEL, messages=messages(data_url(page_png)), max_tokens=4)
    assert by_file.choices[0].message.content == by_data.choices[0].message.content


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    status, body = http_get(server.url + "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


BAD = {
    "broken base64": dict(url="data:image/png;base64,iVBORw0KGgo!!!notbase64", match="base64"),
    "not an image": dict(url=data_url(b"%PDF-1.4 this is no picture at all"), match="not a PNG, JPEG or WebP"),
    "50k x 50k pixels": dict(url=data_url(png_header_only(50_000, 50_000)), match="pixels"),
    "50k x 1k pixels": dict(url=data_url(png_header_only(50_000, 1_000)), match="40,000,000"),
    "gif": dict(url=data_url(gif_bytes(), "image/gif"), match="GIF"),
    "http url": dict(url="http://127.0.0.1:9/page.png", match="--allow-remote-media"),
    "file outside the allowed path": dict(url="file:///etc/hostname", match="outside the allowed"),
    "unknown mode": dict(extra={"dsocr": {"mode": "huge"}}, match="unknown mode 'huge'"),
    "mode not in the bundle": dict(extra={"dsocr": {"mode": "base"}}, match="built for mode"),
    "max_tiles out of range": dict(extra={"dsocr": {"max_tiles": 20}}, match="max_tiles"),
    "unknown extension field": dict(extra={"dsocr": {"colour": "blue"}}, match="colour"),
    "temperature 0.7": dict(kw={"temperature": 0.7}, match="temperature=0.7"),
    "max_tokens as text": dict(kw={"max_tokens": "ten"}, match="max_tokens"),
    "ngram_size as text": dict(extra={"vllm_xargs": {"ngram_size": "3"}}, match="ngram_size"),
    "n = 2": dict(kw={"n": 2}, match="n=2"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_requests_are_4xx_json_errors(client, page_png, case):
    spec = BAD[case]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=messages(spec.get("url") or data_url(page_png)),
                                       extra_body=spec.get("extra"), **{"max_tokens": 2, **spec.get("kw", {})})
    assert err.value.status_code == 400
    body = err.value.body
    assert body["type"] == "invalid_request_error" and spec["match"] in body["message"], body


def test_wrong_message_shapes_and_unknown_model(client, page_png):
    url = data_url(page_png)
    shapes = [
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": "no image here"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}] * 2}],
        [{"role": "robot", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": "not an object"}]}],
    ]
    for msgs in shapes:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)
        assert err.value.body["message"], msgs
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=messages(url), max_tokens=2)
    assert err.value.body["code"] == "model_not_found"


def test_body_over_the_limit_is_413(client, serve_options):
    big = data_url(b"\0" * serve_options.max_body_bytes)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model=MODEL, messages=messages(big), max_tokens=2)
    assert err.value.status_code == 413 and "limit" in err.value.body["message"]


def test_still_serving_after_bad_requests_and_metrics_count_them(server, client, alone, page_png):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=messages("data:image/png;base64,@@"), max_tokens=2)
    raw, _ = alone(page_png, max_new_tokens=3)
    r = client.chat.completions.create(model=MODEL, messages=messages(data_url(page_png)), max_tokens=3,
                                       extra_body={"skip_special_tokens": False})
    assert r.choices[0].message.content == raw.replace(EOS_TEXT, "")
    status, body = http_get(server.url + "/metrics")
    text = body.decode()
    assert status == 200
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values['dsocr_requests_total{status="200"}'] >= 1
    assert values['dsocr_requests_total{status="400"}'] >= 1
    assert values["dsocr_request_latency_seconds_count"] >= 1
    assert values["dsocr_time_to_first_token_seconds_count"] >= 1
    assert values["dsocr_slots"] == 1 and values["dsocr_ready"] == 1
    assert values["dsocr_generated_tokens_total"] >= 3 and values["dsocr_tokens_per_second"] > 0
    assert "dsocr_queue_depth" in values and "dsocr_active_slots" in values
