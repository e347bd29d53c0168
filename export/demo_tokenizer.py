"""The demo tokenizer: a small deterministic byte-level BPE with the official special tokens.

Export-side only (the demo checkpoint and the golden fixtures' checkpoints ship it as tokenizer.json);
the runtime reads it like any other tokenizer.json.
"""
from __future__ import annotations

import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

from dsocr.runtime.errors import InputError
from dsocr.runtime.tokenizer import BOS, EOS, IMAGE, PAD

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
