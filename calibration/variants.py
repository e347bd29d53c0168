"""fp32 bundle -> precision variant bundle (fp16, int8, int8-weight, int4-weight), written atomically.

Variants are data: PRECISIONS maps each precision to a graph kind per role, KINDS says how a kind is
made and where its graphs run. A variant is a full bundle: the same graph files, tokenizer and layout
as the fp32 one, a manifest with `precision` set, each GraphSpec's precision, every file hashed, and
in `source`: `targets` per graph (tensorrt: strongly typed TRT 10.3+/11; onnxruntime; or
onnxruntime-cpu for contrib ops), `derived_from`, the calibration pages and what each graph keeps
in fp32 with its measured score on the calibration feeds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import onnx
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
from tqdm import tqdm

from dsocr.runtime.errors import InputError
from dsocr.runtime.manifest import (MANIFEST_NAME, GraphSpec, Manifest, file_entries, make_stage_dir, read_manifest,
                                    replace_dir, write_manifest)

from .feeds import Feed, Feeds, bundle_feeds
from .groups import always_fp32, group_of, last_layer_groups, num_decoder_layers, weighted_nodes
from .moe import lower_to_qmoe
from .pages import page_set_hash, synthetic_pages
from .precision import ACCURACY_LEVEL, fp16_forced_nodes, load_structure, load_with_shapes, to_fp16, weight_only
from .qdq import assert_qdq_symmetric, qdq_summary, quantizable, quantize_int8, restore_fp32, save_model
from .sensitivity import Probe, Selection, select_fp32_groups
from .stats import (METHODS, CalibrationCache, CalibrationKey, activation_ranges, graph_digest, repair_ranges,
                    save_tensors_data)

EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights above which a graph keeps them in <file>.data
TRT = ("tensorrt", "onnxruntime")
CPU = ("onnxruntime-cpu",)


@dataclass(frozen=True)
class Kind:
    targets: tuple[str, ...]
    calibrated: bool = False  # needs activation ranges
    measured: bool = False  # sensitivity rule applies


KINDS = {
    "fp32": Kind(TRT),
    "fp16": Kind(TRT, measured=True),
    "int8": Kind(TRT, calibrated=True, measured=True),  # Q/DQ, fp32 elsewhere (opset 17 Q/DQ scales are fp32)
    "int8-weight": Kind(CPU),
    "int4-weight": Kind(CPU),
}
PRECISIONS = {
    "fp32": {"vision": "fp32", "embed": "fp32", "decoder": "fp32"},
    "fp16": {"vision": "fp16", "embed": "fp16", "decoder": "fp16"},
    "int8": {"vision": "int8", "embed": "fp16", "decoder": "int8"},
    "int8-weight": {"vision": "int8-weight", "embed": "fp16", "decoder": "int8-weight"},
    # int4 vision weights cost too much (demo: image-feature cosine 0.967); the decoder holds the bytes
    "int4-weight": {"vision": "int8-weight", "embed": "int4-weight", "decoder": "int4-weight"},
}
for _roles in PRECISIONS.values():  # the decode-step decoder (MoE "gather") is lowered as the decoder
    _roles["decoder_step"] = _roles["decoder"]
DECODER_ROLES = ("decoder", "decoder_step")
STEP_FEED_TOKENS = 1  # calibration feeds of a decoder_step graph: the decoder's feeds with T <= this
PRECISION_NAMES = tuple(PRECISIONS)
PROBE_OUTPUT = {"vision": "image_features", "decoder": "logits", "decoder_step": "logits"}


@dataclass(frozen=True)
class PrecisionOptions:
    """How variants are made; validated here."""

    method: str = "max"  # activation ranges: max | percentile | entropy
    decoder_steps: int = 4  # greedy steps captured per page (besides the prefill)
    keep_last_layers: int | None = None  # decoder layers kept fp32; None: max(1, layers // 6)
    sensitivity: bool = True  # measure groups and keep the worst in fp32 until the threshold holds
    vision_threshold: float = 0.999  # mean cosine of image features vs fp32 on the probe feeds
    decoder_threshold: float = 0.999  # mean cosine of logits vs fp32
    max_fp32_fraction: float = 0.5  # of the candidate groups a rule may keep in fp32
    probe_feeds: int = 8  # feeds per graph used to measure
    block_size: int = 32  # weight-only quantization block along K
    cache_dir: Path | None = None  # default: stats.default_cache_dir()
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"method={self.method!r}: choose one of {', '.join(METHODS)}")
        if not 0 <= self.decoder_steps <= 256:
            raise InputError(f"decoder_steps={self.decoder_steps} must lie in 0..256")
        if self.keep_last_layers is not None and self.keep_last_layers < 0:
            raise InputError(f"keep_last_layers={self.keep_last_layers} must be >= 0")
        for name in ("vision_threshold", "decoder_threshold", "max_fp32_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if self.probe_feeds < 1:
            raise InputError(f"probe_feeds={self.probe_feeds} must be >= 1")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise InputError(f"block_size={self.block_size} must be one of 16, 32, 64, 128, 256")


def variant_dir(fp32_bundle: str | Path, precision: str) -> Path:
    """Where a variant goes by default: next to the fp32 bundle, `<bundle>-<precision>`."""
    p = Path(fp32_bundle)
    return p.with_name(f"{p.name}-{precision}")


class CalibrationSource:
    """Calibration pages of one fp32 bundle and, made once on first use, their feeds: shared by every
    variant built in one go."""

    def __init__(self, fp32_bundle: str | Path, pages: Sequence, decoder_steps: int = 4, label: str | None = None):
        self.bundle = Path(fp32_bundle)
        self.pages = list(pages)
        self.decoder_steps = decoder_steps
        self.label = label or f"{len(self.pages)} pages"
        self.pages_hash = page_set_hash(self.pages)
        self._feeds: Feeds | None = None

    def feeds(self, graph: str, say: Callable[[str], None] = lambda s: None) -> list[Feed]:
        if self._feeds is None:
            say("capture calibration feeds (fp32 bundle)")
            modes = read_manifest(self.bundle, verify_files=False).modes
            self._feeds = bundle_feeds(self.bundle, self.pages, modes, self.decoder_steps)
        return self._feeds.graphs.get(graph, [])


@dataclass
class _Context:
    src: Path
    manifest: Manifest
    calib: CalibrationSource
    options: PrecisionOptions
    work: Path  # scratch space on the target's filesystem
    say: Callable[[str], None]
    cache: CalibrationCache = field(init=False)

    def __post_init__(self):
        self.cache = CalibrationCache(self.options.cache_dir)

    @property
    def pages_hash(self) -> str:
        return self.calib.pages_hash

    def feeds(self, graph: str) -> list[Feed]:
        spec = self.manifest.graphs.get(graph)
        if spec is not None and spec.role == "decoder_step":  # the decode steps the prefill graph saw
            return [f for f in self.calib.feeds("decoder", self.say)
                    if f["inputs_embeds"].shape[1] <= STEP_FEED_TOKENS]
        return self.calib.feeds(graph, self.say)

    def key(self, name: str, spec: GraphSpec, what: str) -> CalibrationKey:
        shas = [self.manifest.files[f]["sha256"] for f in (spec.file, spec.file + ".data") if f in self.manifest.files]
        feeds = f"steps={self.options.decoder_steps};prompt=document" if spec.role in DECODER_ROLES else ""
        return CalibrationKey(graph_digest(shas), "+".join(self.manifest.modes), what, self.pages_hash, feeds)

    def keep_last(self, graph) -> int:
        k = self.options.keep_last_layers
        return max(1, num_decoder_layers(graph) // 6) if k is None else k

    def external(self, spec: GraphSpec) -> bool:
        return spec.file + ".data" in self.manifest.files

    def probe(self, name: str, spec: GraphSpec) -> Probe:
        feeds = self.feeds(name)
        n = self.options.probe_feeds
        step = max(1, len(feeds) // n)
        return Probe(self.src / spec.file, feeds[::step][:n], PROBE_OUTPUT[spec.role])


def _save(model: onnx.ModelProto, path: Path, external: bool) -> None:
    big = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    save_model(model, path, external or big)


# -- sensitivity, cached --------------------------------------------------------------------------

def _select(ctx: _Context, name: str, spec: GraphSpec, kind: str, groups: list[str], forced: set[str],
            build: Callable[[set[str]], Path]) -> Selection:
    opts = ctx.options
    threshold = opts.decoder_threshold if spec.role in DECODER_ROLES else opts.vision_threshold
    key = ctx.key(name, spec, opts.method if kind == "int8" else "none")
    tag = hashlib.sha256(json.dumps([kind, sorted(groups), sorted(forced), threshold, opts.max_fp32_fraction,
                                     opts.probe_feeds, opts.sensitivity]).encode()).hexdigest()[:12]
    path = ctx.cache.root / f"select-{key.filename()[:-5]}-{kind}-{tag}.json"
    if path.is_file():
        d = json.loads(path.read_text(encoding="utf-8"))
        ctx.say(f"{name}: fp32 groups from the cache")
        return Selection.from_dict(d)
    probe = ctx.probe(name, spec)
    max_fp32 = max(1, int(opts.max_fp32_fraction * len(groups))) if opts.sensitivity else 0
    sel = select_fp32_groups(groups, build, probe, threshold, forced, max_fp32, measure_solo=opts.sensitivity,
                             on_step=lambda s: ctx.say(f"{name}: {s}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sel.as_dict(), indent=1), encoding="utf-8")
    return sel


# -- one graph per kind ---------------------------------------------------------------------------

def _copy(ctx: _Context, name: str, spec: GraphSpec, stage: Path) -> dict:
    for f in (spec.file, spec.file + ".data"):
        if f in ctx.manifest.files:
            shutil.copyfile(ctx.src / f, stage / f)
    return {}


def _fp16(ctx: _Context, name: str, spec: GraphSpec, stage: Path) -> dict:
    src = ctx.src / spec.file
    structure = onnx.load(str(src), load_external_data=False)
    role = "decoder" if spec.role in DECODER_ROLES else spec.role
    forced_nodes = fp16_forced_nodes(structure.graph, role, ctx.keep_last(structure.graph))
    node_groups: dict[str, list[str]] = {}
    for n in structure.graph.node:
        node_groups.setdefault(group_of(n.name), []).append(n.name)
    forced = last_layer_groups(structure.graph, ctx.keep_last(structure.graph)) if role == "decoder" else set()
    groups = sorted(g for g, ns in node_groups.items() if g != "(graph)" and not set(ns) <= forced_nodes)

    def build(fp32_groups: set[str], out: Path = ctx.work / "candidate.onnx") -> Path:
        blocked = set(forced_nodes).union(*(node_groups[g] for g in fp32_groups if g in node_groups))
        _save(to_fp16(load_with_shapes(src), blocked), out, ctx.external(spec))
        return out

    if spec.role == "embed":
        build(set(), stage / spec.file)
        return {"fp32_nodes": 0}
    sel = _select(ctx, name, spec, "fp16", groups, forced, build)
    build(set(sel.fp32_groups), stage / spec.file)
    return {"fp32_scopes": "RMSNorm, lm_head, router gates, Softmax/TopK" if role == "decoder" else "Softmax/TopK",
            **sel.as_dict()}


def _int8_ranges(ctx: _Context, name: str, spec: GraphSpec, graph, node_groups: dict[str, list[str]]):
    """Activation ranges (cached), repaired where no feed reached a tensor -> (range file, info).
    Nodes with an input left without a range are taken out of node_groups (they stay fp32)."""
    ranges = activation_ranges(ctx.src / spec.file, lambda: ctx.feeds(name), ctx.key(name, spec, ctx.options.method),
                               ctx.cache)
    ctx.say(f"{name}: ranges {'from the cache' if ranges.cached else 'computed'} ({ctx.options.method})")
    weights = {t.name for t in graph.initializer}
    needed = {i for n in graph.node if n.name in {m for ns in node_groups.values() for m in ns}
              for i in n.input[:2] if i and i not in weights}
    data, filled, missing = repair_ranges(graph, ranges.data, needed)
    range_file = ranges.path
    if filled:
        range_file = ctx.work / f"{name}.ranges.json"
        save_tensors_data(data, range_file)
    unmeasured = sorted(n.name for n in graph.node if set(n.input) & set(missing)
                        and n.name in node_groups.get(group_of(n.name), []))
    for n in unmeasured:
        node_groups[group_of(n)].remove(n)
    return range_file, {"method": ctx.options.method, "ranges": ranges.path.name,
                        "ranges_filled_from_source": len(filled), "fp32_unmeasured_nodes": unmeasured}


def _int8(ctx: _Context, name: str, spec: GraphSpec, stage: Path) -> dict:
    src = ctx.src / spec.file
    structure = onnx.load(str(src), load_external_data=False)
    node_groups: dict[str, list[str]] = {}
    for n in quantizable(structure.graph):
        node_groups.setdefault(group_of(n), []).append(n)
    forced = (last_layer_groups(structure.graph, ctx.keep_last(structure.graph)) if spec.role in DECODER_ROLES
              else set())
    range_file, info = _int8_ranges(ctx, name, spec, structure.graph, node_groups)
    everything = ctx.work / f"{name}.all-int8.onnx"
    quantize_int8(src, everything, range_file, ctx.options.method, [n for ns in node_groups.values() for n in ns],
                  ctx.external(spec))
    full, fp32 = onnx.load(str(everything)), onnx.load(str(src))

    def build(fp32_groups: set[str], out: Path = ctx.work / "candidate.onnx") -> Path:
        keep = [n for g in fp32_groups for n in node_groups.get(g, [])]
        still = [n for g, ns in node_groups.items() if g not in fp32_groups for n in ns]
        save_model(restore_fp32(full, fp32, keep, still), out, ctx.external(spec))
        return out

    sel = _select(ctx, name, spec, "int8", sorted(node_groups), forced, build)
    build(set(sel.fp32_groups), stage / spec.file)
    full = fp32 = None  # free both graphs before the check loads the result
    model = onnx.load(str(stage / spec.file))
    assert_qdq_symmetric(model, f"{name} ({spec.file})")
    return {**info, "lm_head_router": "fp32", **qdq_summary(model), **sel.as_dict()}


@contextlib.contextmanager
def _working_dir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def packed_weights(graph, gather: bool) -> set[str]:
    """The initializers weight_only() packs (read lazily by the quantizer): MatMul weights other than
    the router gates (the lm_head is packed, 8-bit), and with `gather` the Gather tables. Everything
    else (Conv kernels, norms, biases, tables) is no quantizer's input and must be loaded inline."""
    ops = {n.name: n.op_type for n in graph.node}
    out = {w for node, w in weighted_nodes(graph).items()
           if ops[node] == "MatMul" and (not always_fp32(w) or "lm_head" in w)}
    if gather:
        inits = {t.name for t in graph.initializer}
        out |= {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in inits}
    return out


def weight_only_file(src: Path, bits: int, block_size: int, gather: bool, qmoe: bool = False) -> onnx.ModelProto:
    """weight_only() of the graph at `src` without ever holding its fp32 weights: the MatMul weights to
    pack stay external and MatMulNBitsQuantizer (onnx_ir) reads them one at a time, resolving their
    location against the working directory (set to the graph's folder meanwhile; not thread-safe).
    Peak = the packed graph + the weights kept fp32 + one fp32 weight (full size int4: ~4 GiB, not 16).
    qmoe: first lower the decode-step graph's routed-expert scopes to QMoE (calibration.moe)."""
    model = load_structure(src)
    if qmoe:
        lower_to_qmoe(model, bits, block_size, src.parent)
    lazy = packed_weights(model.graph, gather)
    for t in model.graph.initializer:
        if t.name not in lazy and uses_external_data(t):
            load_external_data_for_tensor(t, str(src.parent))
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
    with _working_dir(src.parent):
        model = weight_only(model, bits, block_size, lm_head_bits=8, gather=gather, accuracy_level=ACCURACY_LEVEL)
    left = [t.name for t in model.graph.initializer if uses_external_data(t)]
    if left:
        raise InputError(f"{src.name}: weights left unread after quantizing: {left[:4]}")
    return model


def _weight_only(bits: int):
    def lower(ctx: _Context, name: str, spec: GraphSpec, stage: Path) -> dict:
        gather = spec.role == "embed"  # only the token table: vision position tables stay fp32
        if gather and bits != 4:  # GatherBlockQuantized packs 4 bits only
            return _fp16(ctx, name, spec, stage)
        qmoe = spec.role == "decoder_step"  # gathered experts cannot be MatMulNBits: QMoE packs them
        model = weight_only_file(ctx.src / spec.file, bits, ctx.options.block_size, gather, qmoe)
        _save(model, stage / spec.file, ctx.external(spec))
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        info = {"bits": bits, "opset": opset, "block_size": ctx.options.block_size, "symmetric": True,
                "accuracy_level": ACCURACY_LEVEL, "lm_head": "8-bit weights, fp32 compute", "router_gates": "fp32"}
        if qmoe:
            info["routed_experts"] = f"com.microsoft.QMoE, {bits}-bit blocks of {ctx.options.block_size}"
        return info

    return lower


LOWER = {"fp32": _copy, "fp16": _fp16, "int8": _int8, "int8-weight": _weight_only(8), "int4-weight": _weight_only(4)}
GRAPH_PRECISION = {("int8-weight", "embed"): "fp16"}  # what a kind really makes for a role, where it differs


# -- the bundle -----------------------------------------------------------------------------------

def build_variant(fp32_bundle: str | Path, out_dir: str | Path | None, precision: str, pages: Sequence | None = None,
                  options: PrecisionOptions = PrecisionOptions(), pages_label: str | None = None,
                  calib: CalibrationSource | None = None) -> Manifest:
    """Write the `precision` variant of an fp32 bundle to `out_dir` (default `<bundle>-<precision>`).

    pages: calibration pages (PIL images); default 8 built-in synthetic pages (seed 0). calib: a
    CalibrationSource to share feeds between variants (then `pages` is ignored).
    """
    if precision not in PRECISIONS or precision == "fp32":
        raise InputError(f"precision={precision!r}: choose one of {', '.join(PRECISION_NAMES[1:])}")
    src = Path(fp32_bundle)
    out = Path(out_dir) if out_dir is not None else variant_dir(src, precision)
    manifest = read_manifest(src)
    if manifest.precision != "fp32":
        raise InputError(f"{src} is a {manifest.precision} bundle; variants are made from an fp32 bundle")
    if out.exists() and not options.overwrite:
        raise InputError(f"{out} exists; pass overwrite (--force) to replace it")
    if calib is None:
        if pages is None:
            pages, pages_label = synthetic_pages(8, 0), "8 synthetic pages (seed 0)"
        calib = CalibrationSource(src, pages, options.decoder_steps, pages_label)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = make_stage_dir(out.parent, f".{out.name}.partial-")
    try:
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.work-", dir=out.parent) as work, \
                tqdm(total=len(manifest.graphs), disable=not options.progress, unit="graph") as bar:
            ctx = _Context(src, manifest, calib, options, Path(work),
                           say=lambda s: bar.set_description(s[:60]) if options.progress else None)
            graphs, info = _lower_all(ctx, precision, stage, bar)
        for f in (manifest.tokenizer, manifest.layout_file):
            shutil.copyfile(src / f, stage / f)
        new = _variant_manifest(ctx, precision, graphs, info, stage)
        write_manifest(stage, new)
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return new


def build_variants(fp32_bundle: str | Path, precisions: Sequence[str], pages: Sequence,
                   options: PrecisionOptions = PrecisionOptions(), pages_label: str | None = None,
                   on_done: Callable[[str, Path, Manifest], None] | None = None) -> dict[str, Manifest]:
    """Several variants next to the fp32 bundle, sharing one capture of the calibration feeds."""
    calib = CalibrationSource(fp32_bundle, pages, options.decoder_steps, pages_label)
    out = {}
    for precision in precisions:
        target = variant_dir(fp32_bundle, precision)
        out[precision] = build_variant(fp32_bundle, target, precision, options=options, calib=calib)
        if on_done:
            on_done(precision, target, out[precision])
    return out


def _lower_all(ctx: _Context, precision: str, stage: Path, bar) -> tuple[dict, dict]:
    graphs, info = {}, {}
    for name, spec in ctx.manifest.graphs.items():
        kind = PRECISIONS[precision][spec.role]
        ctx.say(f"{name}: {kind}")
        info[name] = LOWER[kind](ctx, name, spec, stage)
        made = GRAPH_PRECISION.get((kind, spec.role), kind)
        info[name]["targets"] = list(KINDS[made].targets)
        graphs[name] = dataclasses.replace(spec, precision=made)
        bar.update()
    return graphs, info


def _variant_manifest(ctx: _Context, precision: str, graphs: dict, info: dict, stage: Path) -> Manifest:
    m = ctx.manifest
    names = sorted(p.name for p in stage.iterdir())
    calibration = {"pages": ctx.calib.label, "pages_sha256": ctx.pages_hash,
                   "decoder_steps": ctx.options.decoder_steps, "method": ctx.options.method}
    source = dict(m.source)
    source.update({
        "targets": {name: info[name].pop("targets") for name in graphs},
        "derived_from": {"bundle": str(ctx.src.resolve()), "precision": m.precision,
                         "manifest_sha256": hashlib.sha256((ctx.src / MANIFEST_NAME).read_bytes()).hexdigest()},
        "calibration": calibration,
        "precision_detail": info,
    })
    return dataclasses.replace(m, precision=precision, graphs=graphs, files=file_entries(stage, names), source=source)

