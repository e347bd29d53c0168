"""Tokenizer wrapper and the demo tokenizer: ids of special tokens, round trips, errors."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
import tokenizers

from dsocr.export.demo_tokenizer import build_demo_tokenizer
from dsocr.runtime.errors import CheckpointError, InputError
from dsocr.runtime.tokenizer import BOS, EOS, PAD, SpecialIds, Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(build_demo_tokenizer(1024))


def test_demo_special_ids(tok):
    sp = tok.special
    assert (sp.bos, sp.eos, sp.pad, sp.image) == (0, 1, 2, 1023)
    assert tok.vocab_size == 1024
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(EOS) == 1 and tok.token_to_id(PAD) == 2
    others = [sp.ref_open, sp.ref_close, sp.det_open, sp.det_close, sp.grounding,
              sp.td_open, sp.td_close, sp.tr_open, sp.tr_close]
    assert None not in others and len(set(others)) == 9 and max(others) < 1023
    assert sp.table_cells() == {sp.td_open, sp.td_close}
    assert sp.as_dict()["image"] == 1023 and set(sp.as_dict()) == set(SpecialIds.__dataclass_fields__)


def test_demo_has_trained_merges(tok):
    merges = json.loads(build_demo_tokenizer(1024).to_str())["model"]["merges"]
    assert 200 <= len(merges) <= 1024 - 3 - 256 - 10  # a few hundred merges, not just bytes
    assert len(tok.encode("the document")) < len("the document")


@pytest.mark.parametrize("text", [
    "Hello, world!", "  two  spaces\tand a tab\n", "", "Ünïcödé, 中文, العربية, emoji 🙂👍🏽",
    "| a | b |\n|---|---|\n| 1 | 2 |", "\\[ \\frac{a}{b} \\]", "\x00\x7f control",
])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_strings_in_text_map_to_ids(tok):
    sp = tok.special
    ids = tok.encode("<image>\n<|grounding|>OCR")
    assert ids[0] == sp.image and ids[2] == sp.grounding
    assert sp.bos not in ids and sp.eos not in ids  # nothing added
    ids = tok.encode("<|ref|>title<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|><td>x</td>")
    assert [i for i in ids if i in tok.special.as_dict().values()] == [
        sp.ref_open, sp.ref_close, sp.det_open, sp.det_close, sp.td_open, sp.td_close]
    assert tok.decode(ids) == "<|ref|>title<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|><td>x</td>"
    assert tok.decode(ids, skip_special=True) == "title[[1, 2, 3, 4]]x"


def test_decode_accepts_numpy(tok):
    import numpy as np

    ids = tok.encode("numpy ids")
    assert tok.decode(np.array(ids, dtype=np.int64)) == "numpy ids"


def test_from_file_round_trip(tmp_path, tok):
    path = tmp_path / "tokenizer.json"
    build_demo_tokenizer(1024).save(str(path))
    loaded = Tokenizer.from_file(path)
    assert loaded.special == tok.special
    assert loaded.encode("same ids?") == tok.encode("same ids?")


def test_demo_is_deterministic_across_processes():
    code = ("import hashlib; from dsocr.export.demo_tokenizer import build_demo_tokenizer; "
            "print(hashlib.sha256(build_demo_tokenizer(1024).to_str().encode()).hexdigest())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    here = hashlib.sha256(build_demo_tokenizer(1024).to_str().encode()).hexdigest()
    assert runs == {here + "\n"}


@pytest.mark.parametrize("size", [269, 300, 2048])
def test_demo_sizes(size):
    t = build_demo_tokenizer(size)
    assert t.get_vocab_size(with_added_tokens=True) == size and t.token_to_id("<image>") == size - 1


def test_demo_too_small():
    with pytest.raises(InputError, match="at least"):
        build_demo_tokenizer(100)


def test_tokenizer_without_image_token(tmp_path):
    t = tokenizers.Tokenizer(tokenizers.models.BPE())
    t.add_special_tokens([BOS, EOS])
    path = tmp_path / "tokenizer.json"
    t.save(str(path))
    with pytest.raises(CheckpointError, match="<image>"):
        Tokenizer.from_file(path)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        Tokenizer.from_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(CheckpointError, match="not a readable"):
        Tokenizer.from_file(bad)


def test_encode_rejects_non_text(tok):
    with pytest.raises(InputError):
        tok.encode(b"bytes")
