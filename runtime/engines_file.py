"""engines.json: the typed record of a bundle's TensorRT plans, written by dsocr.engines.build and read
by the TensorRT backend (no TensorRT import here).

  format, format_version, dsocr_version, tensorrt_version, gpu {name, compute_capability},
  past_pad, bundle {modes, manifest_sha256 (the manifest the plans were built from)},
  plans {graph key: {file, sha256, bytes, build_seconds, onnx {file, sha256}, profile_names, profiles}}
  where profiles is a list of {input: [min, opt, max]} in profile-index order.

Validated against ENGINES_SCHEMA (limits included) before the dataclasses are built. Plan file names are
relative POSIX names resolved inside the engines directory. When that directory lies inside the
bundle, engines.json and every plan are also listed (with SHA-256) in the bundle manifest's `files`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ManifestError
from .manifest_schema import ENGINES_SCHEMA, bundle_path, check_name, read_json_limited, validate

ENGINES_DIR = "engines"  # default place of the plans, inside the bundle
ENGINES_NAME = "engines.json"
ENGINES_FORMAT, ENGINES_FORMAT_VERSION = "dsocr-engines", 1


@dataclass(frozen=True)
class PlanEntry:
    file: str  # relative to the engines directory
    sha256: str
    bytes: int
    onnx_file: str  # the bundle graph it was built from
    onnx_sha256: str
    profiles: list[dict[str, list]]  # per profile: input -> [min, opt, max] shapes
    profile_names: list[str] = field(default_factory=list)
    build_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"file": self.file, "sha256": self.sha256, "bytes": self.bytes,
             "onnx": {"file": self.onnx_file, "sha256": self.onnx_sha256},
             "profile_names": list(self.profile_names), "profiles": self.profiles}
        if self.build_seconds is not None:
            d["build_seconds"] = self.build_seconds
        return d


@dataclass(frozen=True)
class EnginesRecord:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    plans: dict[str, PlanEntry]
    past_pad: int = 1
    bundle: dict[str, Any] = field(default_factory=dict)
    dsocr_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"format": ENGINES_FORMAT, "format_version": ENGINES_FORMAT_VERSION,
                "dsocr_version": self.dsocr_version, "tensorrt_version": self.tensorrt_version,
                "gpu": {"name": self.gpu_name, "compute_capability": self.compute_capability},
                "past_pad": self.past_pad, "bundle": self.bundle,
                "plans": {k: p.to_dict() for k, p in self.plans.items()}}

    @classmethod
    def from_dict(cls, m: Any, where: str | Path = ENGINES_NAME) -> "EnginesRecord":
        if (not isinstance(m, dict) or m.get("format") != ENGINES_FORMAT
                or m.get("format_version") != ENGINES_FORMAT_VERSION):
            raise ManifestError(f"{where} is not a {ENGINES_FORMAT} v{ENGINES_FORMAT_VERSION} manifest; "
                                "rebuild with dsocr-export build (or: python -m dsocr.engines build --bundle BUNDLE)")
        validate(m, ENGINES_SCHEMA, "engines", where)
        plans = {key: PlanEntry(file=p["file"], sha256=p["sha256"], bytes=p["bytes"], onnx_file=p["onnx"]["file"],
                                onnx_sha256=p["onnx"]["sha256"], profiles=p["profiles"],
                                profile_names=list(p.get("profile_names", [])), build_seconds=p.get("build_seconds"))
                 for key, p in m["plans"].items()}
        for key, p in plans.items():
            check_name(p.file, f"engines.plans.{key}.file")  # resolved inside the engines dir by plan_path
        return cls(tensorrt_version=m["tensorrt_version"], gpu_name=m["gpu"]["name"],
                   compute_capability=m["gpu"]["compute_capability"], plans=plans, past_pad=m.get("past_pad", 1),
                   bundle=dict(m.get("bundle", {})), dsocr_version=m.get("dsocr_version", ""))

    def plan_path(self, engines_dir: str | Path, key: str) -> Path:
        """The plan of graph `key`, resolved inside engines_dir (symlinks that leave it are refused)."""
        return bundle_path(engines_dir, self.plans[key].file, f"engines.plans.{key}.file")


def read_engines(path: str | Path) -> EnginesRecord:
    path = Path(path)
    return EnginesRecord.from_dict(read_json_limited(path, ENGINES_NAME), path)


def write_engines(out_dir: str | Path, record: EnginesRecord) -> Path:
    """Write engines.json atomically (temp name, then rename)."""
    path = Path(out_dir) / ENGINES_NAME
    tmp = path.with_name(f".{ENGINES_NAME}.dsocr-tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
    return path


def inside(root: str | Path, path: str | Path) -> str | None:
    """path relative to root as a POSIX name when path lies inside root, else None."""
    r, p = Path(root).resolve(), Path(path).resolve()
    try:
        return p.relative_to(r).as_posix()
    except ValueError:
        return None
