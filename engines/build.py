"""ONNX graph -> TensorRT plan (strongly typed), and a bundle's graphs -> engines/ + engines.json.

Precision lives in the ONNX graph: networks are built strongly typed, with no precision builder
flags (TensorRT 11 removed them; 10.x opts in with NetworkDefinitionCreationFlag.STRONGLY_TYPED).
Graphs are parsed from file so external weight data next to them is found. A timing cache shared by
a bundle's builds is loaded and saved when given. Progress goes through an IProgressMonitor
(TensorRT >= 10.0) drawing tqdm bars; without one the build is silent.

engines.json (written last; read by dsocr.runtime.backends.trt): the typed EnginesRecord of
dsocr.runtime.engines_file (its schema, limits and layout are documented there).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dsocr.runtime import __version__
from dsocr.runtime.backends.trt import ENGINES_DIR, ENGINES_NAME, PAST_PAD, check_engine_manifest, gpu_info, import_trt
from dsocr.runtime.engines_file import EnginesRecord, PlanEntry, inside, write_engines
from dsocr.runtime.errors import BackendUnavailableError, DsocrError, InputError, ManifestError
from dsocr.runtime.manifest import MANIFEST_NAME, file_entries, read_manifest, sha256_file, write_manifest

from .parser_support import check_bundle, errors
from .profiles import Profile, ProfileOptions, graph_profiles

MIN_TRT = (10, 3)
TIMING_CACHE = "timing.cache"


class EngineBuildError(DsocrError):
    """A graph TensorRT cannot parse or build."""


@dataclass(frozen=True)
class EngineBuildOptions:
    workspace_gb: float = 4.0  # builder scratch memory limit
    profiles: ProfileOptions = field(default_factory=ProfileOptions)
    timing_cache: bool = True  # keep <out>/timing.cache across builds
    progress: bool = True

    def __post_init__(self):
        if not 0 < self.workspace_gb <= 1024:
            raise InputError(f"workspace_gb={self.workspace_gb} must lie in (0, 1024]")


def trt_version(trt) -> tuple[int, ...]:
    return tuple(int(p) for p in trt.__version__.split(".")[:2] if p.isdigit())


def network_flags(trt) -> int:
    """create_network() flags for a strongly typed network on TensorRT 10.x and 11.x.

    11.x: strong typing is always on; its STRONGLY_TYPED flag is deprecated and ignored (and may go),
    and EXPLICIT_BATCH no longer exists, so pass nothing. 10.x: STRONGLY_TYPED must be asked for.
    """
    if trt_version(trt) >= (11,):
        return 0
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    if flag is None:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} cannot build strongly typed networks; "
                                      f"dsocr needs TensorRT {MIN_TRT[0]}.{MIN_TRT[1]}+")
    return 1 << int(flag)


def _progress_monitor(trt):
    """An IProgressMonitor drawing one tqdm bar per build phase, or None before TensorRT 10."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None
    from tqdm import tqdm

    class Monitor(base):
        def __init__(self):
            base.__init__(self)
            self._bars: dict[str, tqdm] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = len(self._bars)
            self._bars[phase_name] = tqdm(total=num_steps, desc=f"{'  ' * depth}{phase_name}", leave=depth == 0,
                                          position=depth, file=sys.stderr)

        def step_complete(self, phase_name, step):
            bar = self._bars.get(phase_name)
            if bar is not None:
                bar.n = step + 1
                bar.refresh()
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            bar = self._bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()


def _parse(trt, builder, logger, onnx_path: Path):
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from file: external data resolves next to it
        msgs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}:\n  " + "\n  ".join(msgs))
    return network, parser


def build_engine(onnx_path: str | Path, plan_path: str | Path, profiles: Sequence[Profile],
                 timing_cache: str | Path | None = None, workspace_gb: float = 4.0, progress: bool = True) -> Path:
    """Build one strongly typed plan from `onnx_path` with `profiles` (in index order); return plan_path."""
    trt = import_trt()
    if trt_version(trt) < MIN_TRT:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} is too old: dsocr needs {MIN_TRT[0]}.{MIN_TRT[1]}+")
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for p in profiles:
        prof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.shapes.items():
            prof.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(prof)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT could not build {onnx_path.name} (see the TensorRT log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_suffix(plan_path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(memoryview(plan))
    tmp.replace(plan_path)
    if cache_path is not None:
        cache_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return plan_path


def _check_graphs(bundle: Path) -> None:
    bad = {k: errors(v) for k, v in check_bundle(bundle).items()}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        lines = [f"{k}: {i}" for k, v in bad.items() for i in v[:20]]
        head = "graphs outside TensorRT's ONNX support (engines.parser_support):"
        raise EngineBuildError("\n  ".join([head, *lines]))


def _list_engines(bundle: Path, out: Path, names: list[str]) -> None:
    """Engines inside the bundle are bundle files: list `names` (relative to out) in manifest.files
    with their SHA-256, replacing any earlier engines entries of out; names [] removes them."""
    rel = inside(bundle, out)
    if rel is None:
        return
    prefix = "" if rel == "." else rel + "/"
    manifest = read_manifest(bundle, verify_files=False)
    files = {k: v for k, v in manifest.files.items()
             if k != prefix + ENGINES_NAME and not (k.startswith(prefix) and k.endswith(".plan"))}
    files.update({prefix + n: e for n, e in file_entries(out, names).items()})
    write_manifest(bundle, dataclasses.replace(manifest, files=files))


def build_engines(bundle_dir: str | Path, out_dir: str | Path | None = None,
                  options: EngineBuildOptions = EngineBuildOptions()) -> dict:
    """Build a plan for every graph of the bundle into out_dir (default <bundle>/engines); write engines.json.
    Engines inside the bundle are listed (with SHA-256) in its manifest.files."""
    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)  # checks every file's SHA-256
    _check_graphs(bundle)
    trt = import_trt()
    gpu_name, cc = gpu_info()
    out = Path(out_dir) if out_dir else bundle / ENGINES_DIR
    out.mkdir(parents=True, exist_ok=True)
    manifest_sha = sha256_file(bundle / MANIFEST_NAME)
    _list_engines(bundle, out, [])  # the old engines leave the contract before they are replaced
    (out / ENGINES_NAME).unlink(missing_ok=True)  # stale until the new one is written last
    plans = {}
    for key, spec in manifest.graphs.items():
        profiles = graph_profiles(manifest, key, options.profiles)
        plan_file = f"{key}.plan"
        t0 = time.perf_counter()
        build_engine(bundle / spec.file, out / plan_file, profiles,
                     timing_cache=out / TIMING_CACHE if options.timing_cache else None,
                     workspace_gb=options.workspace_gb, progress=options.progress)
        entry = file_entries(out, [plan_file])[plan_file]
        plans[key] = PlanEntry(file=plan_file, sha256=entry["sha256"], bytes=entry["bytes"],
                               onnx_file=spec.file, onnx_sha256=manifest.files[spec.file]["sha256"],
                               profiles=[p.to_json() for p in profiles], profile_names=[p.name for p in profiles],
                               build_seconds=round(time.perf_counter() - t0, 1))
    record = EnginesRecord(tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc, plans=plans,
                           past_pad=PAST_PAD, dsocr_version=__version__,
                           bundle={"modes": manifest.modes, "manifest_sha256": manifest_sha})
    write_engines(out, record)
    _list_engines(bundle, out, [ENGINES_NAME, *(p.file for p in plans.values())])
    return record.to_dict()


def engines_current(bundle_dir: str | Path, out_dir: str | Path | None = None) -> bool:
    """Whether out_dir's engines.json fits this TensorRT, this GPU and the bundle's current graphs."""
    bundle = Path(bundle_dir)
    out = Path(out_dir) if out_dir else bundle / ENGINES_DIR
    if not (out / ENGINES_NAME).is_file():
        return False
    trt = import_trt()
    try:
        record = check_engine_manifest(out / ENGINES_NAME, trt.__version__, *gpu_info())
    except ManifestError:  # EngineMismatchError included
        return False
    manifest = read_manifest(bundle, verify_files=False)
    plans = record.get("plans", {})
    return all(
        key in plans and (out / plans[key]["file"]).is_file()
        and plans[key]["onnx"]["sha256"] == manifest.files.get(spec.file, {}).get("sha256")
        for key, spec in manifest.graphs.items()
    )
