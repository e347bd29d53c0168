"""The decode loop in small seams (whisper-style): a Runner, LogitFilters, a greedy TokenDecoder,
StopCriteria, and `generate()` tying them together; `TextStreamer` turns ids into text as they come.

Letters: T prompt tokens, D hidden, V vocab, L ids generated so far.
"""
from __future__ import annotations

import dataclasses
import operator
import zlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import CacheOverflowError, InputError

REPLACEMENT_CHAR = "\ufffd"


class StopReason(str, Enum):
    EOS = "eos"  # an end-of-sequence id was generated (it is the last id of the result)
    MAX_TOKENS = "max_tokens"  # max_new_tokens ids were generated
    LOOP = "loop"  # the LoopDetector saw the tail repeat (near-repetition included)
    CACHE_FULL = "cache_full"  # the runner's KV cache has no room for the next step

    def __str__(self) -> str:
        return self.value


# -- the Runner seam -------------------------------------------------------------------------------
@runtime_checkable
class Runner(Protocol):
    """Forward + KV bookkeeping. `position` = number of cached positions (prompt + fed-back ids).

    `step` raises CacheOverflowError (before writing anything) when the cache is full.
    """

    @property
    def position(self) -> int: ...

    def reset(self) -> None: ...

    def prefill(self, input_embeds: np.ndarray) -> np.ndarray:  # input_embeds [T, D] -> logits [V]
        ...

    def step(self, token_id: int) -> np.ndarray:  # one fed-back id -> logits [V]
        ...


class ScriptedRunner:
    """A Runner without a model, for tests and dry runs: `logits_fn(fed_ids) -> logits [V]`, where
    fed_ids are the ids passed to `step` since the last prefill. Mimics the KV cache's overflow."""

    def __init__(self, logits_fn: Callable[[list[int]], np.ndarray], max_seq_len: int | None = None):
        self.logits_fn = logits_fn
        self.max_seq_len = max_seq_len
        self.fed: list[int] = []
        self._position = 0

    @property
    def position(self) -> int:
        return self._position

    def reset(self) -> None:
        self.fed, self._position = [], 0

    def _advance(self, n: int) -> None:
        if self.max_seq_len is not None and self._position + n > self.max_seq_len:
            raise CacheOverflowError(f"{self._position + n} positions needed, cache holds {self.max_seq_len}")
        self._position += n

    def prefill(self, input_embeds: np.ndarray) -> np.ndarray:  # [T, D] -> [V]
        self.reset()
        self._advance(int(input_embeds.shape[0]))
        return np.asarray(self.logits_fn([]), dtype=np.float32)

    def step(self, token_id: int) -> np.ndarray:  # -> [V]
        self._advance(1)
        self.fed.append(int(token_id))
        return np.asarray(self.logits_fn(list(self.fed)), dtype=np.float32)


# -- logit filters ---------------------------------------------------------------------------------
class LogitFilter:
    """Edits logits [V] in place given the ids generated so far. `reset()` starts a new sequence."""

    def apply(self, logits: np.ndarray, generated: list[int]) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        pass


class NoRepeatNGram(LogitFilter):
    """Ban every token that would complete an n-gram already present in the generated ids.

    window=None: transformers' `no_repeat_ngram_size` over all generated ids, indexed incrementally
    ((n-1)-gram -> next ids), O(n) per step. window=w: DeepSeek's vLLM processor: only n-grams that
    start in [max(0, L-w), L-n] count, O(w) per step. Whitelisted ids are never banned.
    Only generated ids are seen (the prompt is embeddings here, mostly image tokens).
    """

    def __init__(self, n: int, window: int | None = None, whitelist: Iterable[int] = frozenset()):
        if n < 1:
            raise InputError(f"n-gram size n={n} must be >= 1")
        if window is not None and window < 1:
            raise InputError(f"window={window} must be >= 1 or None")
        self.n, self.window, self.whitelist = n, window, frozenset(int(t) for t in whitelist)
        self.reset()

    def reset(self) -> None:
        self._seen: dict[tuple[int, ...], set[int]] = {}  # (n-1)-gram -> ids that followed it
        self._indexed = 0  # n-grams starting in [0, _indexed) are in _seen

    def banned(self, generated: Sequence[int]) -> set[int]:
        n, length = self.n, len(generated)
        if length < n:
            return set()
        prefix = tuple(generated[length - n + 1:])  # the last n-1 ids
        if self.window is None:
            out = set(self._index(generated).get(prefix, ()))
        else:
            out = set()
            first = prefix[0] if prefix else None
            for i in range(max(0, length - self.window), length - n + 1):
                if (first is None or generated[i] == first) and tuple(generated[i:i + n - 1]) == prefix:
                    out.add(generated[i + n - 1])
        return out - self.whitelist

    def _index(self, generated: Sequence[int]) -> dict[tuple[int, ...], set[int]]:
        last_start = len(generated) - self.n  # the newest complete n-gram starts here
        if last_start + 1 < self._indexed:  # a shorter list: a new sequence without reset()
            self.reset()
        for i in range(self._indexed, last_start + 1):
            key = tuple(generated[i:i + self.n - 1])
            self._seen.setdefault(key, set()).add(generated[i + self.n - 1])
        self._indexed = max(self._indexed, last_start + 1)
        return self._seen

    def apply(self, logits: np.ndarray, generated: list[int]) -> None:
        ban = self.banned(generated)
        if ban:
            logits[list(ban)] = -np.inf


# -- token choice and stopping ---------------------------------------------------------------------
class GreedyDecoder:
    """The TokenDecoder seam: greedy (temperature 0), as every official DeepSeek-OCR script runs."""

    def choose(self, logits: np.ndarray) -> int:  # logits [V] (filtered) -> id
        return int(np.argmax(logits))


class LoopDetector:
    """Trips when the generated tail compresses too well: whisper's compression-ratio test.

    Every `every` ids once `min_tokens` ids exist, the last `window` ids are decoded to text (with
    `decode`; without one, each id is written as a decimal word) and compressed with zlib; a ratio
    (UTF-8 bytes / compressed bytes) above `ratio` is a loop. Near-repetition, which the n-gram ban
    keeps from ever being exactly periodic, compresses as well as an exact cycle. Measured with the
    demo tokenizer over 512 ids: real markdown, code, number tables and tables of contents stay
    at or below 3.5; the demo model's output above 11 (bench/loop_ratio.py prints the table).
    """

    def __init__(self, window: int = 512, ratio: float = 5.0, min_tokens: int = 128, every: int = 16,
                 decode: Callable[[list[int]], str] | None = None):
        self.window, self.ratio, self.min_tokens, self.every = window, ratio, min_tokens, every
        self.decode = decode
        self.reset()

    def reset(self) -> None:
        self._last = 0  # len(generated) at the last check

    def compression_ratio(self, ids: Sequence[int]) -> float:
        """UTF-8 bytes of the decoded ids over their zlib-compressed size (0.0 for no text)."""
        ids = [int(t) for t in ids]
        text = self.decode(ids) if self.decode is not None else " ".join(map(str, ids))
        data = text.encode("utf-8", "replace")
        return len(data) / len(zlib.compress(data, 6)) if data else 0.0

    def update(self, generated: Sequence[int]) -> bool:
        """Feed the ids generated so far; True when the tail loops."""
        n = len(generated)
        if n < self._last:  # a new sequence without reset()
            self.reset()
        if n < self.min_tokens or (self._last and n - self._last < self.every):
            return False
        self._last = n
        return self.compression_ratio(generated[max(0, n - self.window):]) > self.ratio


class StopCriteria:
    def __init__(self, eos_ids: Iterable[int], max_new_tokens: int, loop: LoopDetector | None = None):
        self.eos_ids = frozenset(int(t) for t in eos_ids)
        self.max_new_tokens = max_new_tokens
        self.loop = loop

    def reset(self) -> None:
        if self.loop is not None:
            self.loop.reset()

    def check(self, generated: list[int]) -> StopReason | None:
        """After appending an id: why to stop now, or None to go on."""
        if generated and generated[-1] in self.eos_ids:
            return StopReason.EOS
        if self.loop is not None and self.loop.update(generated):
            return StopReason.LOOP
        if len(generated) >= self.max_new_tokens:
            return StopReason.MAX_TOKENS
        return None


# -- options ---------------------------------------------------------------------------------------
def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool):
        raise InputError(f"{name}={value!r} must be an integer")
    try:
        v = operator.index(value)
    except TypeError:
        raise InputError(f"{name}={value!r} must be an integer") from None
    if v < minimum:
        raise InputError(f"{name}={v} must be >= {minimum}")
    return v


@dataclass(frozen=True)
class GenerationOptions:
    """Decode-loop options, validated here (InputError, a ValueError, names the bad value).

    Defaults follow the official PDF script: n-gram 20 over a window of 50 generated ids.
    ngram_size=0 turns the ban off; ngram_window=None bans over the whole generated sequence (HF).
    The whitelist is empty by default; the pipeline fills in the `<td>`, `</td>` ids.
    """

    max_new_tokens: int = 8192
    ngram_size: int = 20
    ngram_window: int | None = 50
    whitelist: frozenset[int] = field(default_factory=frozenset)
    loop_detection: bool = True
    loop_window: int = 512  # ids decoded and compressed per check
    loop_ratio: float = 5.0  # compression ratio above which the tail is a loop
    loop_min_tokens: int = 128  # ids generated before the first check
    loop_every: int = 16  # ids between checks
    # ids -> text for the loop test (the pipeline sets its tokenizer's decode); not compared or shown
    text_decoder: Callable[[list[int]], str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen: normalise in place)
        set_("max_new_tokens", _int("max_new_tokens", self.max_new_tokens, 1))
        set_("ngram_size", _int("ngram_size", self.ngram_size, 0))
        if self.ngram_window is not None:
            set_("ngram_window", _int("ngram_window", self.ngram_window, 1))
            if self.ngram_size and self.ngram_window < self.ngram_size:
                raise InputError(f"ngram_window={self.ngram_window} is smaller than ngram_size={self.ngram_size}; "
                                 f"no n-gram would ever be banned")
        if isinstance(self.whitelist, (str, bytes)) or not isinstance(self.whitelist, Iterable):
            raise InputError(f"whitelist={self.whitelist!r} must be a collection of token ids")
        set_("whitelist", frozenset(_int("whitelist id", t, 0) for t in self.whitelist))
        if not isinstance(self.loop_detection, bool):
            raise InputError(f"loop_detection={self.loop_detection!r} must be True or False")
        set_("loop_window", _int("loop_window", self.loop_window, 16))
        set_("loop_min_tokens", _int("loop_min_tokens", self.loop_min_tokens, 1))
        set_("loop_every", _int("loop_every", self.loop_every, 1))
        if isinstance(self.loop_ratio, bool) or not isinstance(self.loop_ratio, (int, float)) \
                or not 1.0 < float(self.loop_ratio) < 1000.0:
            raise InputError(f"loop_ratio={self.loop_ratio!r} must be a number in (1, 1000)")
        set_("loop_ratio", float(self.loop_ratio))
        if self.text_decoder is not None and not callable(self.text_decoder):
            raise InputError(f"text_decoder={self.text_decoder!r} must be a function of a list of ids")

    def with_whitelist(self, ids: Iterable[int]) -> GenerationOptions:
        return dataclasses.replace(self, whitelist=frozenset(ids))

    def with_text_decoder(self, decode: Callable[[list[int]], str]) -> GenerationOptions:
        return dataclasses.replace(self, text_decoder=decode)

    def updated(self, values: dict) -> GenerationOptions:
        """A copy with `values` (field name -> value, None: keep) applied; unknown names raise InputError."""
        given = {k: v for k, v in values.items() if v is not None}
        unknown = sorted(set(given) - set(DEFAULTABLE))
        if unknown:
            raise InputError(f"unknown generation option(s) {', '.join(unknown)}; known: {', '.join(DEFAULTABLE)}")
        return dataclasses.replace(self, **given) if given else self

    def filters(self) -> list[LogitFilter]:
        if not self.ngram_size:
            return []
        return [NoRepeatNGram(self.ngram_size, self.ngram_window, self.whitelist)]

    def stop_criteria(self, eos_ids: Iterable[int]) -> StopCriteria:
        loop = None
        if self.loop_detection:
            loop = LoopDetector(self.loop_window, self.loop_ratio, self.loop_min_tokens, self.loop_every,
                                self.text_decoder)
        return StopCriteria(eos_ids, self.max_new_tokens, loop)


# options a bundle's manifest may set as its defaults (generation_defaults) and users may override
DEFAULTABLE = ("max_new_tokens", "ngram_size", "ngram_window", "loop_detection", "loop_window", "loop_ratio",
               "loop_min_tokens", "loop_every")


# -- the loop --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationResult:
    ids: list[int]  # generated ids; with stop_reason "eos" the last one is the EOS id
    stop_reason: str  # a StopReason value: "eos", "max_tokens", "loop" or "cache_full"
    n_prompt: int  # prompt positions prefilled (T)


class Generation:
    """One page's generation state (the slot seam): its filters, stop criteria and ids.

    `advance(logits)` takes the logits after the prompt or after the last fed-back id and returns the
    next id to feed back, or None when the page has ended (`reason` then says why). `generate()`
    drives one Generation over a Runner; the BatchEngine drives one per slot over a BundleRunner.
    """

    def __init__(self, options: GenerationOptions = GenerationOptions(), eos_ids: Iterable[int] = (1,),
                 on_token: Callable[[int], None] | None = None):
        self.filters, self.decoder = options.filters(), GreedyDecoder()
        self.stop = options.stop_criteria(eos_ids)
        for f in self.filters:
            f.reset()
        self.stop.reset()
        self.on_token = on_token
        self.ids: list[int] = []
        self.reason: StopReason | str | None = None
        self._buf: np.ndarray | None = None  # [V] our copy: filters write here, not into the runner's

    def advance(self, logits: np.ndarray) -> int | None:
        if self.reason is not None:
            return None
        if self._buf is None or self._buf.shape != logits.shape:
            self._buf = np.empty(logits.shape, dtype=np.float32)
        np.copyto(self._buf, logits)
        for f in self.filters:
            f.apply(self._buf, self.ids)
        token = self.decoder.choose(self._buf)
        self.ids.append(token)
        if self.on_token is not None:
            self.on_token(token)
        self.reason = self.stop.check(self.ids)
        return None if self.reason is not None else token

    def end(self, reason: StopReason | str) -> None:
        """End the page from outside (cache full, cancelled)."""
        self.reason = reason

    def result(self, n_prompt: int) -> GenerationResult:
        reason = self.reason.value if isinstance(self.reason, StopReason) else str(self.reason)
        return GenerationResult(ids=list(self.ids), stop_reason=reason, n_prompt=int(n_prompt))


def generate(runner: Runner, prompt_embeds: np.ndarray, options: GenerationOptions = GenerationOptions(),
             eos_ids: Iterable[int] = (1,), on_token: Callable[[int], None] | None = None) -> GenerationResult:
    """Prefill prompt_embeds [T, D], then greedy steps until a stop criterion holds.

    `on_token(id)` is called for every generated id, in order, EOS included. The k-th generated id is
    fed back at position T + k. A prompt that does not fit the cache raises CacheOverflowError; a full
    cache during generation ends it with stop_reason "cache_full".
    """
    if getattr(prompt_embeds, "ndim", None) != 2 or prompt_embeds.shape[0] < 1:
        raise InputError(f"prompt_embeds must be [T, D] with T >= 1, got {getattr(prompt_embeds, 'shape', None)}")
    gen = Generation(options, eos_ids, on_token)
    logits = runner.prefill(prompt_embeds)  # [V]
    while (token := gen.advance(logits)) is not None:
        try:
            logits = runner.step(token)
        except CacheOverflowError:
            gen.end(StopReason.CACHE_FULL)
    return gen.result(prompt_embeds.shape[0])


# -- streaming -------------------------------------------------------------------------------------
class TextStreamer:
    """ids in (`put`), text out (`on_text(chunk)`), never splitting a UTF-8 character.

    Text ending in U+FFFD (a partial multi-byte character so far) is held back until the next id
    completes it, or until `end()`. Decoding restarts after every emitted newline, so each `put`
    decodes at most one line's ids.
    """

    def __init__(self, decode: Callable[[list[int]], str], on_text: Callable[[str], None] | None = None):
        self.decode = decode
        self.on_text = on_text
        self.chunks: list[str] = []  # everything emitted, in order
        self._ids: list[int] = []  # ids of the current line
        self._emitted = 0  # characters of decode(_ids) already emitted

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def _emit(self, chunk: str) -> str:
        if chunk:
            self.chunks.append(chunk)
            if self.on_text is not None:
                self.on_text(chunk)
        return chunk

    def put(self, token_id: int) -> str:
        """Add one id; returns the text emitted now ("" when held back)."""
        self._ids.append(int(token_id))
        text = self.decode(self._ids)
        stable = text.rstrip(REPLACEMENT_CHAR)
        chunk = stable[self._emitted:] if len(stable) > self._emitted else ""
        self._emitted = max(self._emitted, len(stable))
        if stable == text and text.endswith("\n"):
            self._ids, self._emitted = [], 0
        return self._emit(chunk)

    def end(self) -> str:
        """Flush whatever is held back (a genuinely invalid tail stays as U+FFFD)."""
        text = self.decode(self._ids) if self._ids else ""
        chunk = text[self._emitted:]
        self._ids, self._emitted = [], 0
        return self._emit(chunk)
