"""The text tokenizer: a thin wrapper over a Hugging Face `tokenizer.json`, and the demo tokenizer.

Special-token ids are looked up by their official strings in the tokenizer itself (the real
DeepSeek-OCR tokenizer: bos 0, eos 1, pad 2, `<image>` 128815, `<|ref|>` 128816 ... `</tr>` 128824).
Pieces of a prompt are encoded without added special tokens (no automatic BOS); special-token
strings written in the text (`<|grounding|>`) still map to their ids.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

from .errors import CheckpointError, InputError

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
IMAGE = "<image>"
# SpecialIds field -> official token string; None of the optional ones is required
SPECIAL_TOKENS = {
    "bos": BOS, "eos": EOS, "pad": PAD, "image": IMAGE,
    "ref_open": "<|ref|>", "ref_close": "<|/ref|>", "det_open": "<|det|>", "det_close": "<|/det|>",
    "grounding": "<|grounding|>", "td_open": "<td>", "td_close": "</td>", "tr_open": "<tr>", "tr_close": "</tr>",
}
REQUIRED = ("bos", "eos", "image")


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    image: int
    pad: int | None = None
    ref_open: int | None = None
    ref_close: int | None = None
    det_open: int | None = None
    det_close: int | None = None
    grounding: int | None = None
    td_open: int | None = None
    td_close: int | None = None
    tr_open: int | None = None
    tr_close: int | None = None

    def as_dict(self) -> dict[str, int]:
        """{field: id} for the tokens this tokenizer has (the manifest's `special_tokens`)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def table_cells(self) -> frozenset[int]:
        """`<td>`, `</td>`: exempt from the official n-gram repetition ban."""
        return frozenset(i for i in (self.td_open, self.td_close) if i is not None)


def find_special_ids(tok: tokenizers.Tokenizer, source: str = "tokenizer") -> SpecialIds:
    """Look every official special token up by its string; CheckpointError if a required one is absent."""
    ids = {field: tok.token_to_id(text) for field, text in SPECIAL_TOKENS.items()}
    missing = [SPECIAL_TOKENS[f] for f in REQUIRED if ids[f] is None]
    if missing:
        raise CheckpointError(
            f"{source} has no {', '.join(missing)} token: it is not a DeepSeek-OCR tokenizer "
            "(use the tokenizer.json of deepseek-ai/DeepSeek-OCR)")
    return SpecialIds(**ids)


class Tokenizer:
    """Text <-> ids. `special` holds the special-token ids found in this tokenizer."""

    def __init__(self, tok: tokenizers.Tokenizer, source: str = "tokenizer"):
        tok.encode_special_tokens = False  # special-token strings in text map to their ids
        self._tok = tok
        self.special = find_special_ids(tok, source)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such tokenizer file")
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a plain Exception on bad JSON
            raise CheckpointError(f"{path} is not a readable tokenizer.json ({e})") from None
        return cls(tok, str(path))

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer defines, added tokens included (may be below the model's vocab_size)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Text -> ids, nothing added (no BOS/EOS)."""
        if not isinstance(text, str):
            raise InputError(f"can only encode text, not {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Ids -> text. Keep special tokens (the default) for grounded output: `<|ref|>`, `<td>` are special."""
        ids = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64).reshape(-1).tolist()
        return self._tok.decode(ids, skip_special_tokens=skip_special)


# ------------------------------------------------------------------------------------ demo tokenizer

# Extra official tokens of the demo tokenizer, in id order; `<image>` is last, at vocab_size - 1.
DEMO_EXTRA = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>", "<td>", "</td>", "<tr>", "</tr>", IMAGE)
DEMO_MAX_MERGES = 600

DEMO_CORPUS = """\
# Reading a page

A document is converted to markdown one page at a time. The model looks at the whole page, then at
each tile, and writes the text in reading order: titles, paragraphs, lists, tables and formulas.
Tables are written as HTML with <table>, <tr> and <td> cells. Formulas are written in LaTeX, for
example \\( E = mc^2 \\) or \\[ \\sum_{i=1}^{n} x_i \\]. Figures are marked with a box and cut out
of the page as images.

## Why compress text into vision tokens?

A page of text holds about one thousand words. As vision tokens, the same page needs only a few
hundred. The encoder reads the page image, compresses it sixteen times, and hands the tokens to a
small language model that decodes them back into text. When the compression is below ten times,
nearly all of the text comes back; at twenty times, about sixty percent does.

## Modes

| mode | side | tokens |
|------|------|--------|
| tiny | 512 | 64 |
| small | 640 | 100 |
| base | 1024 | 256 |
| large | 1280 | 400 |
| gundam | 640 tiles and 1024 | 256 and 100 per tile |

Each page is first padded or resized to a square. Large pages are also cut into tiles of 640 by 640
pixels, so that small print stays readable. The number of tiles follows the shape of the page: a
portrait page usually gets two columns and three rows.

## Notes

- Numbers: 0 1 2 3 4 5 6 7 8 9, 10, 100, 1000, 3.14, 2025-10-21.
- Punctuation: commas, periods. Questions? Answers! Quotes "like this" and 'that'; (brackets) [too].
- The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
- Invoice number 4471, total amount due: $1,250.00 before the end of the month.
- Reference: see Section 3.2, Table 4 and Figure 7 on page 12 of the report.
"""


def _check_demo_vocab(vocab_size: int) -> None:
    smallest = 3 + 256 + len(DEMO_EXTRA)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < smallest:
        raise InputError(f"vocab_size={vocab_size!r}: the demo tokenizer needs at least {smallest} ids")


def build_demo_tokenizer(vocab_size: int = 1024) -> tokenizers.Tokenizer:
    """A small deterministic byte-level BPE tokenizer with the official special tokens.

    Ids: 0, 1, 2 = bos, eos, pad; then the 256 byte symbols; then up to DEMO_MAX_MERGES merges trained on
    DEMO_CORPUS; then `<｜place▁holder▁no▁K｜>` fillers (as the real tokenizer has) up to
    vocab_size - 11; then DEMO_EXTRA, ending with `<image>` at vocab_size - 1.
    """
    _check_demo_vocab(vocab_size)
    vocab_size = int(vocab_size)
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    base = min(vocab_size - len(DEMO_EXTRA), 3 + 256 + DEMO_MAX_MERGES)
    trainer = trainers.BpeTrainer(
        vocab_size=base, min_frequency=1, show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in (BOS, EOS, PAD)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(DEMO_CORPUS.splitlines(keepends=True), trainer)
    n = tok.get_vocab_size(with_added_tokens=True)
    fillers = [f"<｜place▁holder▁no▁{k}｜>" for k in range(n, vocab_size - len(DEMO_EXTRA))]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*fillers, *DEMO_EXTRA)])
    if tok.get_vocab_size(with_added_tokens=True) != vocab_size or tok.token_to_id(IMAGE) != vocab_size - 1:
        raise RuntimeError("demo tokenizer layout is off: `<image>` must be the last id")  # a bug, not input
    return tok
