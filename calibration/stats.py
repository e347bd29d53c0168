"""Activation range statistics (onnxruntime.quantization's calibrators) and their on-disk cache.

Methods: "max" (MinMax), "percentile" (99.999th percentile of |x|), "entropy" (KL-optimal threshold).
Ranges are collected on the inputs and outputs of the op types that get quantized (MatMul, Conv,
Gemm). Feeds go to the calibrator one at a time: histogram calibrators stack each call's outputs
into one array, which fails when shapes differ between feeds (prefill vs decode step, MoE experts).

Cache: one JSON file per (graph SHA-256, mode, method, page-set hash) under the cache directory,
in onnxruntime's own format (`save_tensors_data`), so `quantize_static(calibration_cache_path=...)`
reads it directly; a `.meta.json` next to it records the key in clear.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from dsocr.runtime.errors import BackendUnavailableError, InputError

try:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import (HistogramCollector, TensorData, TensorsData, create_calibrator,
                                                    load_tensors_data, save_tensors_data)
except ImportError as e:  # pragma: no cover - the calib extra is missing
    raise BackendUnavailableError("calibration needs onnx and onnxruntime: pip install 'dsocr[calib]'") from e

from .feeds import Feed

OP_TYPES = ("MatMul", "Conv", "Gemm")
METHODS = {"max": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
           "entropy": CalibrationMethod.Entropy}
PERCENTILE = 99.999
CACHE_ENV = "DSOCR_CALIB_CACHE"


def method_of(name: str) -> CalibrationMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown calibration method {name!r}; choose one of {', '.join(METHODS)}") from None


def default_cache_dir() -> Path:
    """$DSOCR_CALIB_CACHE, else $XDG_CACHE_HOME/dsocr/calibration, else ~/.cache/dsocr/calibration."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dsocr" / "calibration"


@dataclass(frozen=True)
class CalibrationKey:
    graph_sha256: str  # of the graph file and its external data (graph_digest)
    mode: str  # the mode(s) whose feeds were used, "+"-joined
    method: str  # a METHODS key
    pages: str  # page_set_hash of the pages
    feeds: str = ""  # what else shaped the feeds (decode steps, prompt)

    def filename(self) -> str:
        tail = hashlib.sha256(f"{self.pages}|{self.feeds}|{OP_TYPES}|{PERCENTILE}".encode()).hexdigest()[:16]
        return f"{self.graph_sha256[:16]}-{self.mode}-{self.method}-{tail}.json"


def graph_digest(shas: Sequence[str]) -> str:
    """One digest for a graph from the SHA-256 of its files (graph, then external data, if any)."""
    return shas[0] if len(shas) == 1 else hashlib.sha256("|".join(shas).encode()).hexdigest()


class CalibrationCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: CalibrationKey) -> Path:
        return self.root / key.filename()

    def load(self, key: CalibrationKey) -> TensorsData | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            data = load_tensors_data(p)
        except (OSError, ValueError, KeyError, TypeError):  # a corrupt entry is recomputed
            return None
        return data if data.calibration_method == method_of(key.method) else None

    def store(self, key: CalibrationKey, data: TensorsData) -> Path:
        p = self.path(key)
        save_tensors_data(data, p)  # atomic (temp file + replace)
        p.with_suffix(".meta.json").write_text(json.dumps(asdict(key), indent=1), encoding="utf-8")
        return p


class FeedReader(CalibrationDataReader):
    """A list of feeds as onnxruntime's data reader (rewindable)."""

    def __init__(self, feeds: Sequence[Feed]):
        self.feeds = list(feeds)
        self._i = 0

    def get_next(self) -> Feed | None:
        if self._i >= len(self.feeds):
            return None
        self._i += 1
        return self.feeds[self._i - 1]

    def rewind(self) -> None:
        self._i = 0

    def __len__(self) -> int:
        return len(self.feeds)


@contextlib.contextmanager
def quiet_ort():
    """Silence onnxruntime.quantization's INFO logging and its print()s while it runs."""
    log = logging.getLogger("onnxruntime.quantization")
    level = log.level
    log.setLevel(logging.ERROR)  # INFO per node; known warnings (opset bump for int4) are recorded by callers
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(max(root_level, logging.ERROR))  # "consider pre-processing" warnings
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(level)
        logging.getLogger().setLevel(root_level)


def _largest_first(feeds: Sequence[Feed]) -> list[Feed]:
    # The percentile calibrator sizes its histogram bins on the first feed and only extends them,
    # so a tiny first feed (a decode step) would make later wide ranges cost millions of bins.
    return sorted(feeds, key=lambda f: -max(a.size for a in f.values()))


class _SkipEmpty(HistogramCollector):
    """onnxruntime's histogram collector, minus empty tensors (an MoE expert no token of this feed
    reached): its percentile path takes the max of them and fails. They add nothing to a histogram."""

    def collect(self, name_to_arr):
        return super().collect({k: v for k, v in name_to_arr.items()
                                if all(np.asarray(a).size for a in (v if isinstance(v, list) else [v]))})


def collect_ranges(graph_path: str | Path, feeds: Sequence[Feed], method: str,
                   op_types: Sequence[str] = OP_TYPES, on_feed: Callable[[], None] | None = None) -> TensorsData:
    """Run the calibrator over `feeds` -> TensorsData (per-tensor ranges), no cache involved."""
    if not feeds:
        raise InputError(f"no calibration feeds for {graph_path}")
    # MinMax: an empty tensor (an MoE expert no token reached in one feed) reduces to (+inf, -inf);
    # asymmetric collection lets min/max over feeds skip it, a symmetric one would make it |inf|.
    extra = {"symmetric": method != "max"}
    if method == "percentile":
        extra["percentile"] = PERCENTILE
    with tempfile.TemporaryDirectory(prefix="dsocr-calib-") as tmp, quiet_ort():
        calibrator = create_calibrator(Path(graph_path), list(op_types),
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=method_of(method), use_external_data_format=True,
                                       extra_options=extra)
        if hasattr(calibrator, "num_bins"):  # histogram methods: see _SkipEmpty
            calibrator.collector = _SkipEmpty(calibrator.method, calibrator.symmetric, calibrator.num_bins,
                                              calibrator.num_quantized_bins, calibrator.percentile, calibrator.scenario)
        for feed in _largest_first(feeds):
            calibrator.collect_data(FeedReader([feed]))
            if on_feed:
                on_feed()
        data = calibrator.compute_data()
        del calibrator
    return data


@dataclass(frozen=True)
class Ranges:
    data: TensorsData
    path: Path  # the cache file (onnxruntime's JSON format)
    cached: bool  # True: read from the cache, no inference ran


def activation_ranges(graph_path: str | Path, feeds: Sequence[Feed] | Callable[[], Sequence[Feed]],
                      key: CalibrationKey, cache: CalibrationCache | None = None,
                      on_feed: Callable[[], None] | None = None) -> Ranges:
    """Ranges for `key` from the cache, else computed over `feeds` (a list, or a callable making it
    only on a cache miss) and stored."""
    cache = cache or CalibrationCache()
    hit = cache.load(key)
    if hit is not None:
        return Ranges(hit, cache.path(key), True)
    feed_list = feeds() if callable(feeds) else feeds
    data = collect_ranges(graph_path, feed_list, key.method, on_feed=on_feed)
    return Ranges(data, cache.store(key, data), False)


# -- ranges no feed could give -----------------------------------------------------------------------

# Ops whose output values are a subset or rearrangement of input 0's: its range bounds theirs.
PASS_THROUGH = {"Gather", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Flatten", "Identity",
                "Expand", "GatherElements", "GatherND"}


def _usable(td) -> bool:
    lo, hi = (np.asarray(v, np.float64) for v in td.range_value)
    return bool(np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi >= lo)
                and max(np.max(np.abs(lo)), np.max(np.abs(hi))) > 0)


def repair_ranges(graph, data: TensorsData, needed: Iterable[str] = ()) -> tuple[TensorsData, dict[str, str], list[str]]:
    """Fill ranges that calibration could not measure (a tensor that was empty in every feed, e.g. the
    input of an MoE expert no calibration token was routed to) from the nearest ancestor through
    PASS_THROUGH ops that has one; `needed` names tensors that must have a range even if calibration
    left them out. -> (ranges, {tensor: source}, tensors left without a range)."""
    producer = {o: n for n in graph.node for o in n.output}
    fixed: dict[str, TensorData] = {}
    filled, missing = {}, []
    names = list(data.data) + [n for n in needed if n not in data.data]
    for name in names:
        if name in data.data and _usable(data.data[name]):
            continue
        src, node = name, producer.get(name)
        while node is not None and node.op_type in PASS_THROUGH:
            src = node.input[0]
            if src in data.data and _usable(data.data[src]):
                fixed[name] = data.data[src]
                filled[name] = src
                break
            node = producer.get(src)
        else:
            missing.append(name)
    if not fixed:
        return data, filled, missing
    merged = dict(data.data)
    merged.update(fixed)
    return TensorsData(data.calibration_method, merged), filled, missing
