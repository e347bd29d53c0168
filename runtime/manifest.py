"""manifest.json: the contract between the exporter and the runtime.

The exporter writes it last (after every file it names); the runtime reads only it, checks format
version and SHA-256 of every file, and refuses a mismatch with a ManifestError that says what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from . import __version__
from .errors import ManifestError, ModeError
from .manifest_schema import (MANIFEST_SCHEMA, bundle_path, check_kv_size, check_name, read_json_limited,
                              validate)
from .modes import get_mode

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
        d = _known(cls, d)
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
    generation: str = "ocr1"  # model generation: "ocr1" (DeepSeek-OCR) or "ocr2" (DeepSeek-OCR-2)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    dsocr_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        d = _known(cls, d)
        d["graphs"] = {k: GraphSpec.from_dict(v) for k, v in d["graphs"].items()}
        d["kv"] = KVSpec(**_known(KVSpec, d["kv"]))
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


def _known(cls, d: dict[str, Any]) -> dict[str, Any]:
    """The entries of d that are fields of dataclass cls (the schema admits a few that others add)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _check_contract(raw: dict[str, Any], where: Path) -> None:
    """What the schema cannot say: names inside the bundle, every opened file listed, graphs complete."""
    for name in raw["files"]:
        check_name(name, f"manifest.files[{name!r}]")
    referenced = [(f"manifest.graphs.{k}.file", g["file"]) for k, g in raw["graphs"].items()]
    referenced += [("manifest.tokenizer", raw["tokenizer"]), ("manifest.layout_file", raw["layout_file"])]
    for field_name, name in referenced:
        check_name(name, field_name)
        if name not in raw["files"]:
            raise ManifestError(f"{where}: {field_name} = {name!r} is not listed in manifest.files "
                                "(every file the runtime opens must be listed with its SHA-256)")
    graphs = raw["graphs"]
    for key, role in (("embed", "embed"), ("decoder", "decoder")):
        if key not in graphs or graphs[key]["role"] != role:
            raise ManifestError(f"{where}: manifest.graphs lacks the {role} graph (key {key!r}, role {role!r})")
    sizes = {g.get("size") for g in graphs.values() if g["role"] == "vision"}
    for i, name in enumerate(raw["modes"]):
        try:
            mode = get_mode(name)
        except ModeError as e:
            raise ManifestError(f"{where}: manifest.modes[{i}] = {name!r}: {e}") from None
        for size in mode.vision_sizes:
            if size not in sizes:
                raise ManifestError(f"{where}: mode {name!r} needs a vision graph for {size}x{size} inputs; "
                                    "manifest.graphs has none")
    for name, token in raw["special_tokens"].items():
        if token >= raw["vocab_size"]:
            raise ManifestError(f"{where}: manifest.special_tokens.{name} = {token} is not below "
                                f"vocab_size {raw['vocab_size']}")
    check_kv_size(raw["kv"], where)


def parse_manifest(raw: Any, where: str | Path = MANIFEST_NAME) -> Manifest:
    """A decoded manifest.json -> Manifest, after the schema (with limits) and the contract checks."""
    where = Path(where)
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} must be a JSON object, not {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise ManifestError(f"{where} is not a {FORMAT} manifest (format={str(raw.get('format'))[:60]!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{where} has format version {str(raw.get('format_version'))[:20]}, this dsocr reads version "
            f"{FORMAT_VERSION}; rebuild the bundle with this dsocr's dsocr-export"
        )
    validate(raw, MANIFEST_SCHEMA, "manifest", where)
    _check_contract(raw, where)
    try:
        return Manifest.from_dict(raw)
    except (TypeError, KeyError, ValueError) as e:
        raise ManifestError(f"{where} is missing or has unexpected fields: {e}") from e


def read_manifest(bundle_dir: str | Path, verify_files: bool = True) -> Manifest:
    """Load and check a bundle's manifest (schema, limits, names inside the bundle); verify_files also
    checks size and SHA-256 of every listed file and that graphs' external data is listed."""
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{bundle} is not a dsocr bundle: no {MANIFEST_NAME} (build one with `dsocr-export build`)")
    manifest = parse_manifest(read_json_limited(path, "bundle manifest"), path)
    for name in manifest.files:  # cheap: no symlink may lead out of the bundle, verified or not
        bundle_path(bundle, name, f"manifest.files[{name!r}]")
    if verify_files:
        verify_bundle_files(bundle, manifest)
    return manifest


_LOCATION = b"\x0a\x08location\x12"  # TensorProto.external_data entry: key "location", then the value


def _external_locations(buf: bytes, final: bool) -> tuple[list[bytes], int]:
    """External-data file names in an ONNX chunk -> (names, bytes of buf fully scanned)."""
    out, pos, keep = [], 0, len(buf) if final else max(0, len(buf) - 4200)  # > PATH_MAX + header
    while (i := buf.find(_LOCATION, pos)) != -1:
        j, n, shift, complete = i + len(_LOCATION), 0, 0, False
        while j < len(buf) and shift < 35:  # varint length of the value
            n |= (buf[j] & 0x7F) << shift
            shift += 7
            j += 1
            if not buf[j - 1] & 0x80:
                complete = True
                break
        if not complete or j + n > len(buf):
            if not final and i >= keep:
                return out, i  # read on: the name crosses the chunk boundary
            break
        out.append(buf[j:j + n])
        pos = j + n
    return out, max(pos, keep)


def _hash_file(path: Path, scan: bool, chunk: int = 1 << 22) -> tuple[str, set[str]]:
    """-> (SHA-256, external data names referenced, when scan) in one read of the file."""
    h, names, pending = hashlib.sha256(), set(), b""
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            h.update(block)
            if scan:
                found, used = _external_locations(pending + block, final=not block)
                names.update(n.decode("utf-8", "surrogateescape") for n in found)
                pending = (pending + block)[used:]
            if not block:
                return h.hexdigest(), names


def verify_bundle_files(bundle: Path, manifest: Manifest) -> None:
    graph_files = {g.file for g in manifest.graphs.values()}
    for name, entry in manifest.files.items():
        f = bundle_path(bundle, name, f"manifest.files[{name!r}]")
        try:
            st = f.stat()
        except FileNotFoundError:
            raise ManifestError(f"bundle file {name} named in the manifest is missing from {bundle}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(f"bundle file {name} is not a regular file")
        if st.st_size != entry["bytes"]:
            raise ManifestError(f"bundle file {name} has {st.st_size} bytes, the manifest says {entry['bytes']}")
        digest, external = _hash_file(f, scan=name in graph_files)
        if digest != entry["sha256"]:
            raise ManifestError(f"bundle file {name} does not match its SHA-256 in the manifest (modified or corrupt)")
        base = PurePosixPath(name).parent
        for ext in sorted(external):
            ref = str(base / ext) if str(base) != "." else ext
            try:
                check_name(ref, f"external data of {name}")
            except ManifestError as e:
                raise ManifestError(f"graph {name}: {e}") from None
            if ref not in manifest.files:
                raise ManifestError(f"graph {name} reads external data {ref!r}, which manifest.files does not "
                                    "list (every file the runtime opens must be listed with its SHA-256)")


def bundle_file(bundle_dir: str | Path, manifest: Manifest, name: str, field: str = "file") -> Path:
    """The path of a listed bundle file, refused unless listed and inside the bundle."""
    if name not in manifest.files:
        raise ManifestError(f"{field} = {name!r} is not listed in the bundle's manifest.files")
    return bundle_path(bundle_dir, name, field)


def read_layout(bundle_dir: str | Path, manifest: Manifest) -> tuple[np.ndarray | None, np.ndarray]:
    """layout.npz -> (image_newline [D] or None for OCR-2, view_separator [D]) float32; every failure a
    ManifestError. An OCR-1 bundle needs both vectors, an OCR-2 bundle the separator only."""
    path = bundle_file(bundle_dir, manifest, manifest.layout_file, "manifest.layout_file")
    names = ("view_separator",) if manifest.generation == "ocr2" else ("image_newline", "view_separator")
    try:
        with np.load(path, allow_pickle=False) as lay:
            vectors = {k: np.asarray(lay[k]) for k in names}
    except KeyError as e:
        raise ManifestError(f"{manifest.layout_file} lacks the array {e}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ManifestError(f"{manifest.layout_file} is not a readable .npz ({type(e).__name__}: {e})") from None
    for k, v in vectors.items():
        if v.shape != (manifest.hidden_size,) or v.dtype.kind != "f":
            raise ManifestError(f"{manifest.layout_file}: {k} has shape {v.shape} and dtype {v.dtype}; "
                                f"expected [{manifest.hidden_size}] floats")
    newline = vectors["image_newline"].astype(np.float32) if "image_newline" in vectors else None
    return newline, vectors["view_separator"].astype(np.float32)


def current_umask() -> int:
    """The process umask, read without changing it (Linux /proc), else by the set-and-restore idiom."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_stage_dir(parent: str | Path, prefix: str) -> Path:
    """A fresh staging directory in parent with the umask's permissions (mkdtemp alone gives 0700)."""
    stage = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(stage, 0o777 & ~current_umask())
    return stage


def replace_dir(stage: Path, out: Path) -> None:
    """Move a finished staging directory to `out`, replacing an old bundle only at the very end."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        stage.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        stage.rename(out)
