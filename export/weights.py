"""Checkpoint I/O: the official Hugging Face layout (config.json + safetensors, single or sharded).

Also the fixtures' deterministic weight rule, which rebuilds a checkpoint from key names and shapes.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from dsocr.runtime.errors import CheckpointError

# Persistent buffers: absent from the released checkpoint (the model keeps its default), loaded when
# present, as the official code's load_state_dict would (float values cast to int64 by truncation).
OPTIONAL_KEYS = frozenset({"model.vision_model.embeddings.position_ids"})
INDEX_NAME = "model.safetensors.index.json"


def rule_weight(key: str, shape: Iterable[int]) -> np.ndarray:
    """The golden fixtures' deterministic weight for `key` (see shared/fixtures/README.md)."""
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    n = rng.standard_normal(size=shape)
    if len(shape) >= 2:
        w = n / np.sqrt(float(np.prod(shape[1:])))
    elif key.endswith(".weight"):
        w = 1.0 + 0.02 * n
    else:
        w = 0.02 * n
    return w.astype(np.float32)


def read_keys_txt(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Parse a fixture's keys.txt (`key<TAB>[d0, d1, ...]`)."""
    shapes = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            key, shape = line.split("\t")
            shapes[key] = tuple(json.loads(shape))
    return shapes


def write_rule_checkpoint(
    out_dir: str | Path, shapes: Mapping[str, tuple[int, ...]], config: dict, dtype=torch.float32,
    shard_bytes: int | None = None,
) -> Path:
    """Write a checkpoint directory (config.json + safetensors) with rule weights for `shapes`."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, shape in shapes.items():
        t = torch.from_numpy(rule_weight(key, shape)).to(dtype)
        nbytes = t.numel() * t.element_size()
        if shard_bytes and size and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return out
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=1), encoding="utf-8")
    return out


def checkpoint_files(ckpt_dir: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or sharded index)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory {d} does not exist")
    index = d / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a safetensors index: {e}") from e
        files = [d / f for f in sorted(set(weight_map.values()))]
    else:
        files = sorted(d.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors (nor {INDEX_NAME}) in {d}")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"checkpoint shard {f.name} listed in the index is missing from {d}")
    return files


def checkpoint_keys(ckpt_dir: str | Path) -> set[str]:
    """Every tensor name of a checkpoint, read from the safetensors headers (no tensor is loaded)."""
    from safetensors import SafetensorError, safe_open

    keys: set[str] = set()
    for f in checkpoint_files(ckpt_dir):
        try:
            with safe_open(str(f), framework="pt") as st:
                keys.update(st.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {f} (truncated or corrupt safetensors?): {e}") from e
    return keys


def detect_generation(source: str | Path | Iterable[str]) -> str:
    """"ocr1" or "ocr2" from a checkpoint's key names (both share `model_type`).

    OCR-2: `model.qwen2_model.*` present and neither `model.vision_model.*` nor `model.image_newline`;
    OCR-1: `model.vision_model.*` present and no `model.qwen2_model.*`. Anything else is refused.
    """
    keys = checkpoint_keys(source) if isinstance(source, (str, Path)) else set(source)
    qwen2 = any(k.startswith("model.qwen2_model.") for k in keys)
    clip = any(k.startswith("model.vision_model.") for k in keys)
    newline = "model.image_newline" in keys
    if qwen2 and not clip and not newline:
        return "ocr2"
    if clip and not qwen2:
        return "ocr1"
    raise CheckpointError(
        "cannot tell the DeepSeek-OCR generation from the checkpoint's keys: "
        f"model.qwen2_model.* {'present' if qwen2 else 'absent'}, model.vision_model.* {'present' if clip else 'absent'}, "
        f"model.image_newline {'present' if newline else 'absent'} (OCR-1 has CLIP and the newline, OCR-2 the Qwen2 "
        "encoder and neither)")


def load_state_dict(ckpt_dir: str | Path, dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint; `dtype=None` keeps the stored dtype (bf16 stays bf16)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(ckpt_dir):
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {f} (truncated or corrupt safetensors?): {e}") from e
        for k, v in part.items():
            state[k] = v if dtype is None or not v.is_floating_point() else v.to(dtype)
    return state


def check_state_dict(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor]) -> None:
    """Strict key/shape check; the error names every missing, unexpected or mis-shaped key."""
    have = set(state)
    missing = sorted(set(expected) - have - OPTIONAL_KEYS)
    unexpected = sorted(have - set(expected))
    misshaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in sorted(have & set(expected))
        if tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{title} keys: {shown}")
    if problems:
        raise CheckpointError("checkpoint does not match the model config: " + "; ".join(problems))
