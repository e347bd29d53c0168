"""The OpenAI chat-completions wire format (plus vLLM's DeepSeek-OCR fields and a `dsocr` extension):
pydantic request models, their translation into RunOptions, and the response / stream-chunk shapes.

Accepted, as vLLM documents them for DeepSeek-OCR: `max_tokens` (or `max_completion_tokens`),
`temperature` 0 only (greedy), `skip_special_tokens` (default true, as in vLLM: pass false to keep the
grounding tags), `vllm_xargs: {ngram_size, window_size, whitelist_token_ids}`. Extension:
`dsocr: {mode, max_tiles, return_boxes}`. One image per request (`image_url` part), and at most one
prompt text: a template name (document, ocr, free, figure, describe) or the prompt text itself,
with or without the leading `<image>` (the image comes first when it is left out).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from dsocr.runtime.decoding import GenerationOptions, GenerationResult
from dsocr.runtime.errors import InputError
from dsocr.runtime.pipeline import RunOptions
from dsocr.runtime.prompts import IMAGE_PLACEHOLDER, PROMPTS

STRICT = ConfigDict(strict=True, extra="forbid")
DEFAULT_MAX_TOKENS = 8192  # generation also stops when the bundle's KV cache is full ("length")
FINISH_REASONS = {"eos": "stop", "max_tokens": "length", "cache_full": "length", "loop": "loop"}


class ImageURL(BaseModel):
    model_config = STRICT
    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    model_config = STRICT
    type: Literal["image_url"]
    image_url: ImageURL


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")  # name, tool fields ... are ignored
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[Part], None] = None


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class VllmXargs(BaseModel):
    model_config = STRICT
    ngram_size: int | None = Field(None, ge=0)
    window_size: int | None = Field(None, ge=1)
    whitelist_token_ids: list[Annotated[int, Field(ge=0)]] | None = None


class DsocrExtension(BaseModel):
    model_config = STRICT
    mode: str | None = None
    max_tiles: int = Field(9, ge=2, le=9)
    return_boxes: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")  # user, seed, logprobs=false ... are ignored
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = None
    n: int = 1
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    skip_special_tokens: bool = True
    vllm_xargs: VllmXargs | None = None
    dsocr: DsocrExtension | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def extension(self) -> DsocrExtension:
        return self.dsocr or DsocrExtension()


def _check_sampling(req: ChatCompletionRequest) -> None:
    if req.temperature not in (None, 0):
        raise InputError(f"temperature={req.temperature}: this server decodes greedily, as DeepSeek-OCR "
                         f"is meant to be run; send temperature 0 or leave it out")
    if req.top_p not in (None, 1):
        raise InputError(f"top_p={req.top_p}: decoding is greedy; send top_p 1 or leave it out")
    if req.n != 1:
        raise InputError(f"n={req.n}: one choice per request")
    if req.stop:
        raise InputError("stop sequences are not supported; generation ends at the end-of-sentence token")


def split_messages(req: ChatCompletionRequest) -> tuple[str, str]:
    """-> (the image URL, the prompt text or template name) from the user messages."""
    images: list[str] = []
    texts: list[str] = []
    for m in req.messages:
        if m.role != "user":
            continue
        if isinstance(m.content, str):
            texts.append(m.content)
        for part in m.content if isinstance(m.content, list) else ():
            (images.append(part.image_url.url) if isinstance(part, ImagePart) else texts.append(part.text))
    if len(images) != 1:
        raise InputError(f"a request needs exactly one image_url part in its user message(s), found {len(images)}")
    texts = [t for t in texts if t.strip()]
    if len(texts) > 1:
        raise InputError(f"a request takes one prompt text, found {len(texts)} text parts")
    return images[0], prompt_text(texts[0] if texts else "document")


def prompt_text(text: str) -> str:
    """A template name stays a name; other text gets the image placeholder first unless it has one."""
    t = text.strip()
    if t in PROMPTS or IMAGE_PLACEHOLDER in t:
        return t
    return f"{IMAGE_PLACEHOLDER}\n{t}"


def run_options(req: ChatCompletionRequest) -> tuple[str, RunOptions]:
    """-> (image URL, RunOptions); InputError for anything the runtime cannot do."""
    _check_sampling(req)
    url, prompt = split_messages(req)
    x = req.vllm_xargs or VllmXargs()
    gen = {"max_new_tokens": req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS}
    if x.ngram_size is not None:
        gen["ngram_size"] = x.ngram_size
    if x.window_size is not None:
        gen["ngram_window"] = x.window_size
    if x.whitelist_token_ids is not None:
        gen["whitelist"] = frozenset(x.whitelist_token_ids)
    ext = req.extension
    return url, RunOptions(mode=ext.mode, prompt=prompt, max_tiles=ext.max_tiles,
                           generation=GenerationOptions(**gen))


# -- responses -------------------------------------------------------------------------------------
def finish_reason(result: GenerationResult) -> str:
    return FINISH_REASONS.get(str(result.stop_reason), str(result.stop_reason))


def usage(result: GenerationResult) -> dict[str, int]:
    n = len(result.ids)
    return {"prompt_tokens": result.n_prompt, "completion_tokens": n, "total_tokens": result.n_prompt + n}


def completion(rid: str, created: int, model: str, content: str, result: GenerationResult,
               extension: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason(result), "logprobs": None}],
        "usage": usage(result),
    }
    if extension is not None:
        body["dsocr"] = extension
    return body


def chunk(rid: str, created: int, model: str, delta: dict[str, Any] | None = None,
          finish: str | None = None, usage_: dict[str, int] | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk`; with usage_ it is the final usage chunk (no choices)."""
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    if usage_ is not None:
        body.update(choices=[], usage=usage_)
    else:
        body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None}]
    return body


def error_body(message: str, type_: str, code: str | int | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
