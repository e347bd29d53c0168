"""JSON Schemas (with limits) of manifest.json and engines/engines.json, and bundle file names.

A bundle is untrusted input: its manifest is size- and depth-limited, validated against MANIFEST_SCHEMA
(jsonschema, draft 2020-12) before any dataclass is built, and every failure becomes one
ManifestError line naming the field, e.g. `manifest.kv.max_seq_len = 1000000000 exceeds 1048576`.
Every file name is a relative POSIX path that stays inside the bundle (`check_name`, `bundle_path`).
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ManifestError

MAX_JSON_BYTES = 8 << 20  # a manifest is a few hundred KiB at most (prompt tables included)
MAX_DEPTH = 24  # nesting of objects/arrays
MAX_SEQ_LEN = 1 << 20
MAX_KV_BYTES = 64 << 30  # the KV cache is allocated at its maximum size: refuse absurd ones up front
MAX_FILE_BYTES = 1 << 40
MAX_NAME = 1024  # characters of a bundle file name
GRAPH_ROLES = ("vision", "embed", "decoder", "decoder_step")
GENERATIONS = ("ocr1", "ocr2")
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool")

_INT = {"type": "integer"}
_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME}
_SHA = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_IDS = {"type": "array", "maxItems": 8192, "items": {**_INT, "minimum": 0, "maximum": (1 << 31) - 1}}
_TENSOR = {
    "type": "object", "additionalProperties": False, "required": ["name", "dtype", "shape"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 256},
        "dtype": {"enum": list(DTYPES)},
        "shape": {"type": "array", "maxItems": 8, "items": {
            "oneOf": [{**_INT, "minimum": 0, "maximum": (1 << 31) - 1}, {"type": "string", "maxLength": 64}]}},
    },
}
_TENSORS = {"type": "array", "maxItems": 512, "items": _TENSOR}
_GRAPH = {
    "type": "object", "additionalProperties": False, "required": ["role", "file", "inputs", "outputs"],
    "properties": {
        "role": {"enum": list(GRAPH_ROLES)}, "file": _NAME, "inputs": _TENSORS, "outputs": _TENSORS,
        "size": {"oneOf": [{**_INT, "minimum": 1, "maximum": 8192}, {"type": "null"}]},
        "precision": {"type": "string", "maxLength": 32},
    },
}
_SMALL = {"oneOf": [{"type": "number", "minimum": -1e9, "maximum": 1e9}, {"type": "boolean"}, {"type": "null"}]}

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["format", "format_version", "modes", "precision", "graphs", "kv", "hidden_size", "vocab_size",
                 "rope_theta", "special_tokens", "prompts", "tokenizer", "layout_file", "files"],
    "properties": {
        "format": {"type": "string", "maxLength": 64},
        "format_version": _INT,
        "dsocr_version": {"type": "string", "maxLength": 64},
        "generation": {"enum": list(GENERATIONS)},
        "generation_defaults": {"type": "object", "maxProperties": 32, "additionalProperties": _SMALL,
                                "propertyNames": {"maxLength": 64}},
        "modes": {"type": "array", "minItems": 1, "maxItems": 16, "uniqueItems": True,
                  "items": {"type": "string", "minLength": 1, "maxLength": 32}},
        "precision": {"type": "string", "minLength": 1, "maxLength": 32},
        "graphs": {"type": "object", "minProperties": 1, "maxProperties": 64, "additionalProperties": _GRAPH,
                   "propertyNames": {"maxLength": 64}},
        "kv": {
            "type": "object", "additionalProperties": False,
            "required": ["num_layers", "num_heads", "head_dim", "dtype", "max_seq_len"],
            "properties": {
                "num_layers": {**_INT, "minimum": 1, "maximum": 512},
                "num_heads": {**_INT, "minimum": 1, "maximum": 1024},
                "head_dim": {**_INT, "minimum": 1, "maximum": 1024},
                "dtype": {"enum": ["float32", "float16", "bfloat16"]},
                "max_seq_len": {**_INT, "minimum": 16, "maximum": MAX_SEQ_LEN},
                "layout": {"type": "string", "pattern": "^[A-Za-z_]{1,16}$"},
                "batch": {**_INT, "minimum": 1, "maximum": 4096},
                "max_batch": {**_INT, "minimum": 1, "maximum": 4096},
            },
        },
        "hidden_size": {**_INT, "minimum": 1, "maximum": 1 << 16},
        "vocab_size": {**_INT, "minimum": 1, "maximum": 1 << 22},
        "rope_theta": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e12},
        "special_tokens": {"type": "object", "maxProperties": 256, "propertyNames": {"maxLength": 64},
                           "additionalProperties": {**_INT, "minimum": 0, "maximum": (1 << 31) - 1}},
        "prompts": {"type": "object", "maxProperties": 64, "propertyNames": {"maxLength": 64},
                    "additionalProperties": {
                        "type": "object", "additionalProperties": False, "required": ["text"],
                        "properties": {"text": {"type": "string", "maxLength": 1 << 16}, "before": _IDS,
                                       "after": _IDS}}},
        "tokenizer": _NAME,
        "layout_file": _NAME,
        "files": {"type": "object", "maxProperties": 4096, "propertyNames": {"maxLength": MAX_NAME},
                  "additionalProperties": {
                      "type": "object", "additionalProperties": False, "required": ["sha256", "bytes"],
                      "properties": {"sha256": _SHA, "bytes": {**_INT, "minimum": 0, "maximum": MAX_FILE_BYTES}}}},
        "source": {"type": "object", "maxProperties": 64},
    },
}

_BOUNDS = {"type": "array", "minItems": 3, "maxItems": 3,
           "items": {"type": "array", "maxItems": 8, "items": {**_INT, "minimum": 0, "maximum": (1 << 31) - 1}}}
ENGINES_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["format", "format_version", "tensorrt_version", "gpu", "plans"],
    "properties": {
        "format": {"type": "string", "maxLength": 64},
        "format_version": _INT,
        "dsocr_version": {"type": "string", "maxLength": 64},
        "tensorrt_version": {"type": "string", "minLength": 1, "maxLength": 64},
        "gpu": {"type": "object", "required": ["name", "compute_capability"],
                "properties": {"name": {"type": "string", "maxLength": 256},
                               "compute_capability": {"type": "string", "maxLength": 16}}},
        "past_pad": {**_INT, "minimum": 0, "maximum": 64},
        "bundle": {"type": "object"},
        "plans": {"type": "object", "maxProperties": 64, "propertyNames": {"maxLength": 64},
                  "additionalProperties": {
                      "type": "object", "required": ["file", "sha256", "bytes", "onnx", "profiles"],
                      "properties": {
                          "file": _NAME, "sha256": _SHA, "bytes": {**_INT, "minimum": 0, "maximum": MAX_FILE_BYTES},
                          "build_seconds": {"type": "number"},
                          "onnx": {"type": "object", "required": ["file", "sha256"],
                                   "properties": {"file": _NAME, "sha256": _SHA}},
                          "profile_names": {"type": "array", "maxItems": 64,
                                            "items": {"type": "string", "maxLength": 64}},
                          "profiles": {"type": "array", "minItems": 1, "maxItems": 64, "items": {
                              "type": "object", "maxProperties": 512, "additionalProperties": _BOUNDS}},
                      }}},
    },
}


# ------------------------------------------------------------------------------------ reading
def _depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return True


def read_json_limited(path: Path, what: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Read a small JSON file: size, UTF-8, syntax, finite numbers and nesting depth checked (ManifestError)."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ManifestError(f"{what} ({path}) is not a regular file")
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ManifestError(f"{what} ({path}) is not readable: {e.strerror or e}") from e
    if len(data) > max_bytes:
        raise ManifestError(f"{what} ({path}) is larger than {max_bytes} bytes; not a dsocr file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{what} ({path}) is not UTF-8 text (byte {e.start})") from None

    def no_constant(name):  # NaN / Infinity are not JSON
        raise ValueError(f"{name} is not a JSON number")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise ManifestError(f"{what} ({path}) is nested more than {max_depth} levels deep") from None
    except ValueError as e:
        raise ManifestError(f"{what} ({path}) is not valid JSON: {e}") from None
    if not _depth_ok(value, max_depth):
        raise ManifestError(f"{what} ({path}) is nested more than {max_depth} levels deep")
    if not isinstance(value, dict):
        raise ManifestError(f"{what} ({path}) must be a JSON object, not {type(value).__name__}")
    return value


def _field(root: str, path) -> str:
    out = root
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(root: str, err) -> str:
    """One jsonschema error -> `root.a.b = value <what is wrong>`."""
    where, v, arg, inst = _field(root, err.absolute_path), err.validator, err.validator_value, err.instance
    if v == "required":
        missing = [k for k in arg if isinstance(inst, dict) and k not in inst]
        return f"{where} lacks the required field {missing[0] if missing else arg!r}"
    if v == "additionalProperties":
        extra = sorted(k for k in inst if k not in err.schema.get("properties", {}))
        return f"{where} has unexpected field(s) {', '.join(map(repr, extra))}"
    if v in ("maximum", "exclusiveMaximum"):
        return f"{where} = {_short(inst)} exceeds {arg}"
    if v in ("minimum", "exclusiveMinimum"):
        return f"{where} = {_short(inst)} is below {'or at ' if v == 'exclusiveMinimum' else ''}{arg}"
    if v in ("maxItems", "maxProperties", "maxLength"):
        return f"{where} has {len(inst)} {'characters' if v == 'maxLength' else 'entries'}, more than {arg}"
    if v in ("minItems", "minProperties", "minLength"):
        return f"{where} is empty or too short (at least {arg} needed)"
    if v == "enum":
        return f"{where} = {_short(inst)} is not one of {', '.join(map(str, arg))}"
    if v == "type":
        return f"{where} = {_short(inst)} must be of type {arg}"
    if v == "pattern":
        return f"{where} = {_short(inst)} is not valid (must match {arg})"
    if v == "propertyNames":
        return f"{where} has a key longer than allowed"
    if v == "uniqueItems":
        return f"{where} has repeated entries"
    return f"{where}: {err.message[:200]}"


_VALIDATORS: dict[int, Any] = {}


def validate(value: Any, schema: dict[str, Any], root: str, where: Path | str) -> None:
    """Raise one ManifestError naming the first offending field (deepest first among equals)."""
    import jsonschema

    validator = _VALIDATORS.get(id(schema))
    if validator is None:
        validator = _VALIDATORS[id(schema)] = jsonschema.Draft202012Validator(schema)
    err = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if err is not None:
        raise ManifestError(f"{where}: {_describe(root, err)}")


def check_kv_size(kv: dict[str, Any], where: Path | str) -> None:
    item = 2 if kv["dtype"] in ("float16", "bfloat16") else 4
    total = 2 * kv["num_layers"] * kv["num_heads"] * kv["head_dim"] * kv["max_seq_len"] * item
    if total > MAX_KV_BYTES:
        raise ManifestError(f"{where}: manifest.kv needs a {total / 2**30:.1f} GiB cache (keys and values at "
                            f"max_seq_len {kv['max_seq_len']}), more than the limit of {MAX_KV_BYTES >> 30} GiB")


def check_number(value: Any, field: str, where: Path | str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ManifestError(f"{where}: {field} = {value} is not a finite number")


# -------------------------------------------------------------------------------------- names
def check_name(name: Any, field: str) -> str:
    """A bundle file name: a relative POSIX path without '..', backslashes, NUL or empty parts."""
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{field} must be a non-empty file name, not {_short(name)}")
    bad = None
    if "\x00" in name:
        bad = "contains a NUL byte"
    elif "\\" in name:
        bad = "contains a backslash (names are POSIX paths)"
    elif name.startswith("/") or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        bad = "is an absolute path"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        bad = "has an empty, '.' or '..' part"
    elif len(name) > MAX_NAME or any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in name.split("/")):
        bad = "is too long"
    if bad:
        raise ManifestError(f"{field} = {_short(name)} {bad}; every name must be a relative path inside the bundle")
    return name


def bundle_path(root: str | Path, name: str, field: str = "file") -> Path:
    """root/name after checking the name, with symlinks resolved: refused unless it stays inside root."""
    check_name(name, field)
    base = Path(root).resolve()
    path = (base / name).resolve()
    if path != base and base not in path.parents:
        raise ManifestError(f"{field} = {_short(name)} resolves to {path}, outside {base} (a symlink leaving "
                            "the bundle); copy the file into the bundle instead")
    return path
