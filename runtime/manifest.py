"""manifest.json: the contract between the exporter and the runtime.

The exporter writes it last (after every file it names); the runtime reads only it, checks format
version and SHA-256 of every file, and refuses a mismatch with a ManifestError that says what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ManifestError

FORMAT = "dsocr-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, float16, int64, bool
    shape: list  # ints for static dims, strings for symbolic ones


@dataclass(frozen=True)
class GraphSpec:
    role: str  # "vision" | "embed" | "decoder"
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    size: int | None = None  # vision: the square side S
    precision: str = "fp32"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GraphSpec":
        d = dict(d)
        d["inputs"] = [TensorSpec(**t) for t in d["inputs"]]
        d["outputs"] = [TensorSpec(**t) for t in d["outputs"]]
        return cls(**d)


@dataclass(frozen=True)
class KVSpec:
    """Per layer i: inputs past_key.i / past_value.i [B, P, H, hd], outputs present_key.i / present_value.i [B, T, H, hd]."""

    num_layers: int
    num_heads: int
    head_dim: int
    dtype: str
    max_seq_len: int
    layout: str = "BSHD"


@dataclass(frozen=True)
class Manifest:
    modes: list[str]
    precision: str
    graphs: dict[str, GraphSpec]
    kv: KVSpec
    hidden_size: int
    vocab_size: int
    rope_theta: float
    special_tokens: dict[str, int]
    prompts: dict[str, dict[str, Any]]  # name -> {"text": str, "before": [ids], "after": [ids]}
    tokenizer: str
    layout_file: str  # npz with image_newline [D], view_separator [D]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"sha256", "bytes"}
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint info, export settings
    # decode options used when the user gives none, e.g. {"max_new_tokens": 256} (runtime.decoding.DEFAULTABLE)
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    dsocr_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        d = dict(d)
        d["graphs"] = {k: GraphSpec.from_dict(v) for k, v in d["graphs"].items()}
        d["kv"] = KVSpec(**d["kv"])
        return cls(**d)

    def vision_graph(self, size: int) -> GraphSpec:
        for g in self.graphs.values():
            if g.role == "vision" and g.size == size:
                return g
        raise ManifestError(f"bundle has no vision graph for {size}x{size} inputs")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(bundle_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"sha256": sha256_file(bundle_dir / n), "bytes": (bundle_dir / n).stat().st_size} for n in names}


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    path = Path(bundle_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(bundle_dir: str | Path, verify_files: bool = True) -> Manifest:
    """Load and check a bundle's manifest; verify_files also checks size and SHA-256 of every file."""
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{bundle} is not a dsocr bundle: no {MANIFEST_NAME} (build one with `dsocr-export build`)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from e
    if raw.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a {FORMAT} manifest (format={raw.get('format')!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{path} has format version {raw.get('format_version')}, this dsocr reads version {FORMAT_VERSION}; "
            "rebuild the bundle with this dsocr's dsocr-export"
        )
    try:
        manifest = Manifest.from_dict(raw)
    except (TypeError, KeyError) as e:
        raise ManifestError(f"{path} is missing or has unexpected fields: {e}") from e
    if verify_files:
        verify_bundle_files(bundle, manifest)
    return manifest


def verify_bundle_files(bundle: Path, manifest: Manifest) -> None:
    for name, entry in manifest.files.items():
        f = bundle / name
        if not f.is_file():
            raise ManifestError(f"bundle file {name} named in the manifest is missing from {bundle}")
        size = f.stat().st_size
        if size != entry["bytes"]:
            raise ManifestError(f"bundle file {name} has {size} bytes, the manifest says {entry['bytes']}")
        if sha256_file(f) != entry["sha256"]:
            raise ManifestError(f"bundle file {name} does not match its SHA-256 in the manifest (modified or corrupt)")


def replace_dir(stage: Path, out: Path) -> None:
    """Move a finished staging directory to `out`, replacing an old bundle only at the very end."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        stage.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        stage.rename(out)
