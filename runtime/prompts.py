"""The official prompt templates as data, and the split around the image placeholder (ARCHITECTURE §3.1).

The official 'plain' conversation template adds nothing: the prompt text is stripped, then split on
the literal `<image>`; each side is tokenized without special tokens.
"""
from __future__ import annotations

import string
from types import MappingProxyType

from .errors import InputError

IMAGE_PLACEHOLDER = "<image>"

PROMPTS = MappingProxyType({
    "document": "<image>\n<|grounding|>Convert the document to markdown.",
    "ocr": "<image>\n<|grounding|>OCR this image.",
    "free": "<image>\nFree OCR.",
    "figure": "<image>\nParse the figure.",
    "describe": "<image>\nDescribe this image in detail.",
    "locate": "<image>\nLocate <|ref|>{ref}<|/ref|> in the image.",
})
PROMPT_NAMES = tuple(PROMPTS)


def prompt_fields(name: str) -> tuple[str, ...]:
    """Names of the `{fields}` a template needs (e.g. ('ref',) for locate)."""
    return tuple(f for _, f, _, _ in string.Formatter().parse(_template(name)) if f)


def _template(name: str) -> str:
    try:
        return PROMPTS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown prompt {name!r}; choose one of: {', '.join(PROMPT_NAMES)}") from None


def get_prompt(name: str, **fields) -> str:
    """The text of template `name` with its fields filled in; fields it does not use (or None) are ignored."""
    template = _template(name)
    needed = prompt_fields(name)
    missing = [f for f in needed if fields.get(f) is None or not str(fields[f]).strip()]
    if missing:
        raise InputError(f"prompt {name!r} needs {', '.join(f'{m}=...' for m in missing)}")
    values = {f: str(fields[f]) for f in needed}
    for f, v in values.items():
        if IMAGE_PLACEHOLDER in v:
            raise InputError(f"{f}={v!r} must not contain {IMAGE_PLACEHOLDER}")
    return template.format(**values)


def split_prompt(text: str) -> tuple[str, str]:
    """Prompt text -> (text before `<image>`, text after), after the 'plain' template's strip().

    Exactly one `<image>` is required: the image embeddings go in its place.
    """
    if not isinstance(text, str):
        raise InputError(f"a prompt must be text, not {type(text).__name__}")
    text = text.strip()
    count = text.count(IMAGE_PLACEHOLDER)
    if count != 1:
        raise InputError(f"a prompt needs exactly one {IMAGE_PLACEHOLDER} placeholder, found {count}: {text!r}")
    before, after = text.split(IMAGE_PLACEHOLDER)
    return before, after
