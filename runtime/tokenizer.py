"""The text tokenizer: a thin wrapper over a Hugging Face `tokenizer.json`.

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
