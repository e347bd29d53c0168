"""The decode loop's seams: n-gram ban vs a brute-force reference, stop criteria, streaming."""
import random
from pathlib import Path

import numpy as np
import pytest

from dsocr.runtime.decoding import (GenerationOptions, GenerationResult, LoopDetector, NoRepeatNGram, Runner,
                                    ScriptedRunner, StopReason, TextStreamer, generate)
from dsocr.runtime.errors import CacheOverflowError, InputError

V = 32  # vocab of the fake runner
PROMPT = np.zeros((5, 8), dtype=np.float32)  # [T, D]


def ranked_logits(order):
    """logits [V] preferring order[0], then order[1], ...; all other ids far below."""
    logits = np.full(V, -100.0, dtype=np.float32)
    for rank, tok in enumerate(order):
        logits[tok] = 50.0 - rank
    return logits


def cycle_runner(cycle, max_seq_len=None):
    """Wants cycle[k % len] at step k; the next ids of the cycle are its fallbacks when banned."""
    def fn(fed):
        k = len(fed)
        return ranked_logits([cycle[(k + j) % len(cycle)] for j in range(len(cycle))])
    return ScriptedRunner(fn, max_seq_len)


def brute_banned(ids, n, window, whitelist=frozenset()):
    """Reference: rebuild every n-gram from scratch (vLLM-style with a window, HF-style without)."""
    length = len(ids)
    if length < n:
        return set()
    prefix = ids[length - n + 1:]
    lo = 0 if window is None else max(0, length - window)
    return {ids[i + n - 1] for i in range(lo, length - n + 1) if ids[i:i + n - 1] == prefix} - set(whitelist)


def has_repeated_ngram(ids, n):
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


# -- n-gram ban --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,window", [(1, 5), (2, None), (3, None), (3, 6), (4, 10), (2, 3), (5, None)])
def test_ngram_ban_matches_brute_force_incrementally(n, window):
    rng = random.Random(n * 100 + (window or 0))
    for trial in range(20):
        ids = [rng.randrange(4) for _ in range(rng.randrange(0, 60))]  # small alphabet: many repeats
        whitelist = frozenset({rng.randrange(4)}) if trial % 3 == 0 else frozenset()
        f = NoRepeatNGram(n, window, whitelist)
        for length in range(len(ids) + 1):  # as the decode loop calls it: one id longer each time
            prefix = ids[:length]
            assert f.banned(prefix) == brute_banned(prefix, n, window, whitelist), (prefix, n, window)


def test_ngram_filter_restarts_on_a_shorter_sequence():
    f = NoRepeatNGram(2)
    assert f.banned([1, 2, 3, 1]) == {2}
    assert f.banned([4, 5, 4]) == {5}  # a new sequence without reset(): stale index must not leak
    assert f.banned([1, 2, 3, 1, 2, 3, 1]) == {2}


def test_ngram_apply_sets_minus_inf_only_on_banned():
    logits = np.arange(V, dtype=np.float32)
    NoRepeatNGram(3, window=None).apply(logits, [7, 8, 9, 7, 8])
    assert logits[9] == -np.inf
    assert np.isfinite(np.delete(logits, 9)).all()


def test_generate_with_ngram_ban_never_repeats_an_ngram():
    runner = cycle_runner([3, 4, 5, 6])
    opts = GenerationOptions(max_new_tokens=40, ngram_size=3, ngram_window=None, loop_detection=False)
    result = generate(runner, PROMPT, opts, eos_ids=(1,))
    assert len(result.ids) == 40 and result.stop_reason == "max_tokens"
    assert not has_repeated_ngram(result.ids, 3)
    assert result.ids[:4] == [3, 4, 5, 6]  # the ban only starts once a 3-gram would repeat


def test_generate_windowed_ban_matches_brute_force_each_step():
    runner = cycle_runner([3, 4, 5, 6, 7])
    seen = []

    class Check(NoRepeatNGram):
        def apply(self, logits, generated):
            assert self.banned(generated) == brute_banned(generated, 3, 8)
            seen.append(len(generated))
            super().apply(logits, generated)

    class Opts(GenerationOptions):
        def filters(self):
            return [Check(3, 8)]

    result = generate(runner, PROMPT, Opts(max_new_tokens=30, loop_detection=False))
    assert seen == list(range(30))
    for k in range(3, len(result.ids) + 1):
        assert result.ids[k - 1] not in brute_banned(result.ids[:k - 1], 3, 8)


def test_whitelisted_ids_may_repeat():
    runner = cycle_runner([3, 4])
    base = dict(max_new_tokens=12, ngram_size=2, ngram_window=None, loop_detection=False)
    banned = generate(runner, PROMPT, GenerationOptions(**base)).ids
    allowed = generate(runner, PROMPT, GenerationOptions(**base, whitelist={3, 4})).ids
    assert has_repeated_ngram(allowed, 2) and allowed == [3, 4] * 6
    assert not has_repeated_ngram(banned, 2)


# -- stopping ----------------------------------------------------------------------------------------
def test_eos_stops_and_is_kept():
    runner = ScriptedRunner(lambda fed: ranked_logits([9 if len(fed) < 3 else 1]))
    result = generate(runner, PROMPT, GenerationOptions(ngram_size=0), eos_ids=(1,))
    assert result == GenerationResult(ids=[9, 9, 9, 1], stop_reason="eos", n_prompt=5)
    assert runner.position == 5 + 3  # the EOS id is not fed back


def test_max_new_tokens():
    result = generate(cycle_runner([3, 4, 5]), PROMPT, GenerationOptions(max_new_tokens=7, ngram_size=0))
    assert result.ids == [3, 4, 5, 3, 4, 5, 3] and result.stop_reason == StopReason.MAX_TOKENS.value


def test_cache_full_stops_generation_and_a_too_long_prompt_raises():
    result = generate(cycle_runner([3, 4, 5], max_seq_len=9), PROMPT, GenerationOptions(ngram_size=0))
    assert result.stop_reason == "cache_full" and len(result.ids) == 5  # 5 prompt + 4 fed back = 9
    with pytest.raises(CacheOverflowError):
        generate(cycle_runner([3], max_seq_len=4), PROMPT)


def test_loop_detector_trips_on_an_exact_cycle():
    cycle = [random.Random(0).randrange(2, V) for _ in range(37)]
    opts = GenerationOptions(max_new_tokens=2000, ngram_size=0, loop_min_tokens=256, loop_every=16)
    result = generate(cycle_runner(cycle), PROMPT, opts)
    assert result.stop_reason == "loop"
    assert len(result.ids) == 256  # the first check (at loop_min_tokens) already sees it


ARCHITECTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "ARCHITECTURE.md"


def word_tokenizer(text):
    """A word-level stand-in tokenizer fitted to `text`: -> (ids, decode)."""
    words = text.split(" ")
    vocab = {w: i + 2 for i, w in enumerate(dict.fromkeys(words))}
    inverse = {i: w for w, i in vocab.items()}
    return [vocab[w] for w in words], (lambda ids: " ".join(inverse.get(i, "?") for i in ids))


def near_repetition_runner(period, vocab_size):
    """Wants a `period`-id cycle; under the n-gram ban it falls back to other ids, so it never repeats exactly."""
    rng = random.Random(period)
    cycle = [rng.randrange(2, vocab_size) for _ in range(period)]

    def fn(fed):
        logits = np.full(vocab_size, -100.0, dtype=np.float32)
        k = len(fed)
        logits[rng.randrange(2, vocab_size)] = 40.0  # a varying second choice
        logits[cycle[k % period]] = 50.0
        return logits
    return ScriptedRunner(fn)


def test_near_repetition_under_the_ngram_ban_trips_the_guard():
    ids, decode = word_tokenizer(ARCHITECTURE.read_text(encoding="utf-8"))
    vocab_size = max(ids) + 1
    opts = GenerationOptions(max_new_tokens=3000, ngram_size=20, ngram_window=50).with_text_decoder(decode)
    result = generate(near_repetition_runner(25, vocab_size), PROMPT, opts)
    assert result.stop_reason == "loop" and len(result.ids) < 600
    tail = result.ids[-128:]
    assert not any(tail[p:] == tail[:-p] for p in range(1, 65))  # the ban keeps it from being periodic


def test_real_markdown_does_not_trip_the_guard():
    """A real markdown document (tables, code, lists), word-tokenized, fed id by id: no check fires."""
    ids, decode = word_tokenizer(ARCHITECTURE.read_text(encoding="utf-8"))
    assert len(ids) > 3000
    det = LoopDetector(decode=decode)
    assert not any(det.update(ids[:k]) for k in range(1, len(ids) + 1))
    assert det.compression_ratio(ids[:512]) < det.ratio < LoopDetector(decode=decode).compression_ratio(ids[:30] * 17)


def test_loop_detector_checks_every_few_ids_and_restarts_on_a_new_sequence():
    det = LoopDetector(window=64, ratio=3.0, min_tokens=32, every=8)
    looping = [5, 6, 7] * 40
    trips = [det.update(looping[:k]) for k in range(1, 121)]
    assert trips.index(True) == 31  # the first check, at 32 ids
    assert [k + 1 for k, t in enumerate(trips) if t] == list(range(32, 121, 8))
    varied = list(range(100, 220))
    assert not any(det.update(varied[:k]) for k in range(1, 121))  # shorter list: a new sequence


def test_loop_detection_can_be_turned_off():
    opts = GenerationOptions(max_new_tokens=600, ngram_size=0, loop_detection=False)
    assert generate(cycle_runner([3, 4]), PROMPT, opts).stop_reason == "max_tokens"


# -- options -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,needle", [
    (dict(max_new_tokens=0), "max_new_tokens=0"),
    (dict(max_new_tokens=2.5), "max_new_tokens=2.5"),
    (dict(ngram_size=-1), "ngram_size=-1"),
    (dict(ngram_window=0), "ngram_window=0"),
    (dict(ngram_size=20, ngram_window=10), "ngram_window=10"),
    (dict(whitelist=[1, -3]), "whitelist id=-3"),
    (dict(whitelist="td"), "whitelist='td'"),
    (dict(loop_detection="yes"), "loop_detection='yes'"),
    (dict(loop_window=4), "loop_window=4"),
    (dict(loop_ratio=1.0), "loop_ratio=1.0"),
    (dict(loop_ratio="5"), "loop_ratio='5'"),
    (dict(loop_every=0), "loop_every=0"),
    (dict(text_decoder="utf8"), "text_decoder='utf8'"),
    (dict(max_new_tokens=True), "max_new_tokens=True"),
])
def test_options_reject_bad_values_by_name(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[")) as info:
        GenerationOptions(**kwargs)
    assert isinstance(info.value, InputError)


def test_options_defaults_and_whitelist():
    opts = GenerationOptions()
    assert (opts.max_new_tokens, opts.ngram_size, opts.ngram_window, opts.whitelist) == (8192, 20, 50, frozenset())
    wl = opts.with_whitelist([128821, np.int64(128822)])
    assert wl.whitelist == frozenset({128821, 128822}) and opts.whitelist == frozenset()
    (f,) = wl.filters()
    assert (f.n, f.window, f.whitelist) == (20, 50, wl.whitelist)
    assert GenerationOptions(ngram_size=0).filters() == []
    assert GenerationOptions(ngram_window=None).filters()[0].window is None


def test_scripted_runner_is_a_runner():
    assert isinstance(ScriptedRunner(lambda fed: ranked_logits([1])), Runner)


def test_generate_rejects_a_flat_prompt():
    with pytest.raises(InputError, match=r"\[T, D\]"):
        generate(cycle_runner([3]), np.zeros(8, dtype=np.float32))


# -- streaming ---------------------------------------------------------------------------------------
def test_on_token_sees_every_id_in_order_before_the_next_step():
    events = []

    class Logged(ScriptedRunner):
        def step(self, token_id):
            events.append(("step", token_id))
            return super().step(token_id)

    runner = Logged(lambda fed: ranked_logits([[5, 6, 7, 1][len(fed)]]))
    result = generate(runner, PROMPT, GenerationOptions(ngram_size=0), on_token=lambda t: events.append(("tok", t)))
    assert result.ids == [5, 6, 7, 1]
    assert events == [("tok", 5), ("step", 5), ("tok", 6), ("step", 6), ("tok", 7), ("step", 7), ("tok", 1)]


def byte_decode(ids):
    return bytes(ids).decode("utf-8", errors="replace")


def test_streamer_holds_partial_utf8():
    text = "Größe: 世界 🙂 ok\nline two ∑\n"
    data = list(text.encode("utf-8"))
    got = []
    s = TextStreamer(byte_decode, got.append)
    for k, b in enumerate(data):
        emitted = s.put(b)
        assert "\ufffd" not in emitted
        done = data[:k + 1]
        assert s.text == bytes(done).decode("utf-8", errors="ignore")  # exactly the complete characters
    s.end()
    assert "".join(got) == text == s.text
    assert "界" in got and "🙂" in got  # multibyte characters arrive whole


def test_streamer_end_flushes_an_invalid_tail():
    got = []
    s = TextStreamer(byte_decode, got.append)
    for b in b"ab\xe4":
        s.put(b)
    assert "".join(got) == "ab"
    assert s.end() == "\ufffd" and "".join(got) == "ab\ufffd"


def test_streamer_decodes_at_most_one_line_at_a_time():
    calls = []

    def decode(ids):
        calls.append(len(ids))
        return byte_decode(ids)

    s = TextStreamer(decode)
    for b in ("x" * 9 + "\n").encode() * 20:
        s.put(b)
    assert max(calls) <= 10 and s.text == ("x" * 9 + "\n") * 20
