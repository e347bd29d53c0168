"""Static check: does an ONNX graph stay inside what the TensorRT ONNX parser accepts?

Targets: TensorRT 10.3 (Jetson Orin, JetPack 6) and TensorRT 11.x (datacenter). dsocr exports opset
17 (export/onnx_export.py); the parser of 10.3 reads opsets 9..20 and 11.x reads newer ones too, so
the binding limit is 10.3's: default domain only, opset 9..20, the ops in SUPPORTED below.

Sources, read not copied (cite when changing the table):
* onnx-tensorrt docs/operators.md at release 10.1-GA ("TensorRT 10.0 supports operators in the
  inclusive range of opset 9 to opset 20"): the op list, per-op types and restrictions below.
* onnx-tensorrt CHANGELOG: 10.2 and 10.3 add no operators (10.3: tensor `axes` for Slice, a new
  ScatterElements importer); 10.4 adds tensor `axes` for Pad and Blackman/Hamming/HannWindow; 10.5
  STFT; 10.7 dynamic axes for Squeeze/Unsqueeze; 10.15 RMSNormalization, RotaryEmbedding,
  TensorScatter. Those later additions are listed in LATER and rejected here (Jetson stays on 10.3).
* operators.md at 10.15: same restrictions for the ops we use; QuantizeLinear "`y_zero_point` must be
  0", DequantizeLinear "`x_zero_point` must be zero" (symmetric quantization only), Q/DQ types INT8,
  FP8, INT4 (FP4 from 10.8+); "Antialiasing is not supported" for Resize; ScatterND "`reduction`
  other than `none` is not supported"; TopK "`sorted` must be 1, K < 3840".
* NonZero: operators.md lists FP32, FP16, but the INonZeroLayer it maps to takes FLOAT, HALF, INT32
  or BOOL (TensorRT 10.2/10.4 C++ API reference); the layer's list is used (a bool mask is common).
* NVIDIA "ONNX Opset Guide" (TensorRT 11.x): maximum opset 25; 11.x removed weak typing (precision
  must live in the graph), which this checker does not need to know about.
* Blocked quantization (Q/DQ `block_size`, used for INT4 weights) exists only from ONNX opset 21, so
  an opset <= 20 graph cannot express it for the 10.3 parser: it is reported as an error.
* Data types (operators.md 10.x): DOUBLE is cast down to FLOAT with clamping (warning); BFLOAT16 is
  parsed but needs an Ampere or newer GPU (sm_80+: Orin, A100, H100 are fine; warning); UINT8 only as
  a network input/output; string, complex and other integer widths are not TensorRT types.

Type groups in the table: H = FP32 FP16; F = H + BF16; FI = F + INT32 INT64; FIB = FI + BOOL;
FIBU = FIB + UINT8; NZ = FP32 FP16 INT32 BOOL; B = BOOL; Q = INT8 FP8 INT4 (quantized inputs);
"-" = not checked. The group is checked on the op's data input (input 0; input 1 for Where).

The table of supported ops is appended to this docstring at import (`render_table()`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

OPSET = 17  # what dsocr exports
MIN_OPSET, MAX_OPSET = 9, 20  # TensorRT 10.3's parser (the oldest target)
DEFAULT_DOMAINS = ("", "ai.onnx")

# op  type-group  restriction (as documented; the checked ones are marked in CHECKS below)
_TABLE = """
Abs FI
Acos F
Acosh F
Add FI
And B
ArgMax FI
ArgMin FI
Asin F
Asinh F
Atan F
Atanh F
AveragePool F 2D or 3D pooling only; dilations empty or all ones
BatchNormalization F
Cast FIBU
CastLike FIBU
Ceil F
Celu F
Clip F
Concat FIB
Constant - sparse_value, value_string, value_strings unsupported
ConstantOfShape -
Conv F
ConvTranspose F
Cos F
Cosh F
CumSum F axis must be an initializer
DeformConv H 1D or 2D spatial input; symmetric pads
DepthToSpace FI
DequantizeLinear Q x_zero_point must be zero; per-tensor or per-axis scale
Div FI
Dropout F training_mode must be an initializer that is False
Einsum F at most two operands (TensorRT's Einsum layer)
Elu F
Equal FI
Erf F
Exp F
Expand FIB
EyeLike FIB input must have static dimensions
Flatten FIB
Floor F
Gather FIB
GatherElements FIB
GatherND FIB
Gelu FI
Gemm F
GlobalAveragePool F
GlobalLpPool F
GlobalMaxPool F
Greater FI
GreaterOrEqual FI
GridSample H 4D input only
GroupNormalization F
GRU F bidirectional: same activations both ways
HardSigmoid F
HardSwish F
Hardmax F axis dimension must be a build-time constant
Identity FIB
If - branch outputs of equal rank and different names
ImageScaler F
InstanceNormalization F
IsInf F
IsNaN FI
LayerNormalization F only the first output Y
LeakyRelu F
Less FI
LessOrEqual FI
Log F
LogSoftmax F
Loop - scan outputs of static length; loop-carried shapes fixed
LRN F
LSTM F input_forget = 0, layout = 0; bidirectional: same activations
LpNormalization F
LpPool F dilations empty or all ones
MatMul F
Max FI
MaxPool F 2D or 3D pooling only; no Indices output; dilations empty or all ones
Mean FI
MeanVarianceNormalization F
Min FI
Mish H
Mod FI
Mul FI
Neg FI
NonMaxSuppression H
NonZero NZ FP32, FP16, INT32 or BOOL input (INonZeroLayer; operators.md lists FP32, FP16 only)
Not B
OneHot - depth must be a build-time constant
Or B
Pad FI axes must be an initializer (tensor axes from 10.4)
ParametricSoftplus F
Pow F
PRelu F
QuantizeLinear F y_zero_point must be 0 (int8/fp8/int4 output); per-tensor or per-axis scale
RandomNormal - seed ignored
RandomNormalLike F seed ignored
RandomUniform - seed ignored
RandomUniformLike F seed ignored
Range FI
Reciprocal F
ReduceL1 FI axes must be an initializer
ReduceL2 FI axes must be an initializer
ReduceLogSum FI axes must be an initializer
ReduceLogSumExp FI axes must be an initializer
ReduceMax FI axes must be an initializer
ReduceMean FI axes must be an initializer
ReduceMin FI axes must be an initializer
ReduceProd FI axes must be an initializer
ReduceSum FI axes must be an initializer
ReduceSumSquare FI axes must be an initializer
Relu FI
Reshape FIB
Resize F nearest/linear only; no antialias; keep_aspect_ratio_policy stretch; coordinate modes in RESIZE_COORDS
ReverseSequence FIB
RNN F bidirectional: same activations both ways
RoiAlign H
Round F
ScaledTanh F
Scan -
Scatter FI
ScatterElements FI
ScatterND FI reduction must be none
Selu F
Shape -
Shrink FI
Sigmoid F
Sign FI
Sin F
Sinh F
Size -
Slice FIB
Softmax F
Softplus F
Softsign F
SpaceToDepth FI
Split FIB
Sqrt F
Squeeze FIB axes must be an initializer (dynamic axes from 10.7)
Sub FI
Sum FI
Tan F
Tanh F
ThresholdedRelu F
Tile FIB
TopK FI sorted must be 1; K < 3840
Transpose FIB
Trilu FIB
Unsqueeze FIB axes must be an initializer (dynamic axes from 10.7)
Upsample F
Where FIB
Xor B
"""

# Supported by a later TensorRT than Jetson's 10.3 (onnx-tensorrt CHANGELOG), or by an opset > 20.
LATER = {
    "BlackmanWindow": "10.4", "HammingWindow": "10.4", "HannWindow": "10.4", "STFT": "10.5",
    "RMSNormalization": "10.15 (opset 23)", "RotaryEmbedding": "10.15 (opset 23)",
    "TensorScatter": "10.15 (opset 24)", "Attention": "10.15 (opset 23)",
}

_P = {"FP32", "FP16"}
GROUPS: dict[str, frozenset[str] | None] = {
    "H": frozenset(_P), "F": frozenset(_P | {"BF16"}), "FI": frozenset(_P | {"BF16", "INT32", "INT64"}),
    "FIB": frozenset(_P | {"BF16", "INT32", "INT64", "BOOL"}),
    "FIBU": frozenset(_P | {"BF16", "INT32", "INT64", "BOOL", "UINT8"}),
    "NZ": frozenset(_P | {"INT32", "BOOL"}), "B": frozenset({"BOOL"}), "Q": frozenset({"INT8", "FP8", "INT4"}),
    "-": None,
}


@dataclass(frozen=True)
class OpSupport:
    types: str  # a GROUPS key
    restriction: str = ""


def _parse_table(text: str) -> dict[str, OpSupport]:
    out = {}
    for line in text.strip().splitlines():
        op, types, *rest = line.split(None, 2)
        out[op] = OpSupport(types, rest[0] if rest else "")
    return out


SUPPORTED: dict[str, OpSupport] = _parse_table(_TABLE)

# ONNX TensorProto.DataType -> TensorRT-facing name; None: not a TensorRT type at all.
DTYPES = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: None, 5: None, 6: "INT32", 7: "INT64", 8: None, 9: "BOOL",
    10: "FP16", 11: "FP64", 12: None, 13: None, 14: None, 15: None, 16: "BF16", 17: "FP8", 18: None,
    19: None, 20: None, 21: None, 22: "INT4",
}
ONNX_TYPE_NAMES = {4: "uint16", 5: "int16", 8: "string", 12: "uint32", 13: "uint64", 14: "complex64",
                   15: "complex128", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz",
                   21: "uint4", 23: "float4e2m1"}


@dataclass(frozen=True)
class Issue:
    severity: str  # "error": the parser (or the build) will refuse it; "warning": works with a caveat
    code: str  # opset | domain | unsupported-op | attribute | qdq | dtype | external-data | load
    message: str
    node: str = ""  # node name (or the tensor name for dtype issues)
    op_type: str = ""

    def __str__(self) -> str:
        where = " ".join(p for p in (self.op_type, repr(self.node) if self.node else "") if p)
        return f"{self.severity}: {self.code}{f' [{where}]' if where else ''}: {self.message}"


def errors(issues: Iterable[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity == "error"]


class _Context:
    """Graph-wide lookups: tensor dtypes (after shape inference), constant values, local functions."""

    def __init__(self, model, base_dir: Path | None):
        import onnx
        from onnx import numpy_helper, shape_inference

        self.base_dir, self._numpy_helper = base_dir, numpy_helper
        try:
            inferred = shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # noqa: BLE001 - dtype checks are best effort; inference may reject odd graphs
            inferred = model
        g = inferred.graph
        self.dtypes: dict[str, int] = {}
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.HasField("tensor_type"):
                self.dtypes[vi.name] = vi.type.tensor_type.elem_type
        self.initializers = {t.name: t for t in model.graph.initializer}
        for name, t in self.initializers.items():
            self.dtypes[name] = t.data_type
        self.constants = {}
        for node in _all_nodes(model.graph):
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
                for a in node.attribute:
                    if a.name == "value":
                        self.constants[node.output[0]] = a.t
                        self.dtypes[node.output[0]] = a.t.data_type
        self.functions = {(f.domain, f.name) for f in model.functions}
        self.io = {vi.name for vi in list(model.graph.input) + list(model.graph.output)}
        self._onnx = onnx

    def is_const(self, name: str) -> bool:
        return name in self.initializers or name in self.constants

    def value(self, name: str) -> np.ndarray | None:
        t = self.initializers.get(name) or self.constants.get(name)
        if t is None:
            return None
        try:
            return self._numpy_helper.to_array(t, base_dir=str(self.base_dir) if self.base_dir else "")
        except Exception:  # noqa: BLE001 - external data missing: reported by the external-data check
            return None

    def dtype(self, name: str) -> int | None:
        return self.dtypes.get(name)


def _all_nodes(graph):
    """Every node of a graph, subgraphs (If/Loop/Scan bodies) included."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.type == a.GRAPH:
                yield from _all_nodes(a.g)
            for sub in a.graphs:
                yield from _all_nodes(sub)


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _issue(node, code: str, message: str, severity: str = "error") -> Issue:
    return Issue(severity, code, message, node.name, node.op_type)


# -- per-op checks ---------------------------------------------------------------------------------

def _check_zero_point(node, ctx: _Context, index: int) -> list[Issue]:
    zp = _input(node, index)
    if not zp:
        if node.op_type == "QuantizeLinear":
            return [_issue(node, "qdq", "no y_zero_point: ONNX then quantizes to uint8, TensorRT to int8 only; "
                           "give an int8 zero point of 0", "warning")]
        return []
    if ctx.dtype(zp) == 2:
        return [_issue(node, "qdq", "uint8 zero point: TensorRT quantization is symmetric int8/fp8/int4")]
    value = ctx.value(zp)
    if value is None:
        return [_issue(node, "qdq", f"zero point {zp!r} is not a constant; TensorRT needs it to be 0", "warning")]
    if np.any(value.astype(np.float64) != 0):
        return [_issue(node, "qdq", f"zero point {zp!r} is not all zeros: TensorRT supports symmetric "
                       "quantization only (zero point 0)")]
    return []


def _check_qdq(node, ctx: _Context) -> list[Issue]:
    out = _check_zero_point(node, ctx, 2)
    if int(_attr(node, "block_size", 0) or 0) > 0:
        out.append(_issue(node, "qdq", "blocked quantization (block_size) needs opset 21, beyond TensorRT 10.3"))
    scale = ctx.value(_input(node, 1))
    if scale is not None and scale.ndim > 1:
        out.append(_issue(node, "qdq", f"scale of rank {scale.ndim}: only per-tensor or per-axis scales"))
    return out


RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}


def _check_resize(node, ctx: _Context) -> list[Issue]:
    out = []
    if int(_attr(node, "antialias", 0) or 0):
        out.append(_issue(node, "attribute", "antialias=1 is not supported (freeze the resized table at export)"))
    if _attr(node, "mode", "nearest") not in ("nearest", "linear"):
        out.append(_issue(node, "attribute", f"mode={_attr(node, 'mode')!r}: only nearest and linear"))
    coords = _attr(node, "coordinate_transformation_mode", "half_pixel")
    if coords not in RESIZE_COORDS:
        out.append(_issue(node, "attribute", f"coordinate_transformation_mode={coords!r} is not supported"))
    if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        out.append(_issue(node, "attribute", "keep_aspect_ratio_policy must be 'stretch'"))
    return out


def _const_input(index: int, what: str) -> Callable:
    def check(node, ctx: _Context) -> list[Issue]:
        name = _input(node, index)
        if name and not ctx.is_const(name):
            return [_issue(node, "attribute", f"{what} ({name!r}) must be an initializer or Constant "
                           "(fold constants: polygraphy surgeon sanitize --fold-constants)")]
        return []
    return check


def _check_topk(node, ctx: _Context) -> list[Issue]:
    out = []
    if int(_attr(node, "sorted", 1)) != 1:
        out.append(_issue(node, "attribute", "sorted=0 is not supported"))
    k = ctx.value(_input(node, 1))
    if k is not None and k.size and int(k.reshape(-1)[0]) >= 3840:
        out.append(_issue(node, "attribute", f"K={int(k.reshape(-1)[0])}: TensorRT needs K < 3840"))
    return out


def _check_pool(node, ctx: _Context) -> list[Issue]:
    out = []
    dil = _attr(node, "dilations")
    if dil and any(d != 1 for d in dil):
        out.append(_issue(node, "attribute", f"dilations={list(dil)}: must be all ones"))
    kernel = _attr(node, "kernel_shape") or []
    if node.op_type in ("MaxPool", "AveragePool") and len(kernel) not in (2, 3):
        out.append(_issue(node, "attribute", f"{len(kernel)}D pooling: only 2D or 3D"))
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        out.append(_issue(node, "attribute", "the Indices output is not supported"))
    return out


def _check_layernorm(node, ctx: _Context) -> list[Issue]:
    if any(o for o in node.output[1:]):
        return [_issue(node, "attribute", "only the first output (Y) is supported; Mean/InvStdDev are used")]
    return []


def _check_attr_equals(name: str, allowed, message: str) -> Callable:
    def check(node, ctx: _Context) -> list[Issue]:
        value = _attr(node, name)
        return [] if value is None or value in allowed else [_issue(node, "attribute", f"{name}={value!r}: {message}")]
    return check


def _check_constant(node, ctx: _Context) -> list[Issue]:
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    return [_issue(node, "attribute", f"Constant with {bad[0]} is not supported")] if bad else []


def _check_lstm(node, ctx: _Context) -> list[Issue]:
    bad = [n for n in ("input_forget", "layout") if int(_attr(node, n, 0) or 0)]
    return [_issue(node, "attribute", f"{bad[0]} must be 0")] if bad else []


def _check_einsum(node, ctx: _Context) -> list[Issue]:
    if len(node.input) > 2:
        return [_issue(node, "attribute", f"Einsum with {len(node.input)} operands; prefer pairwise MatMul",
                       "warning")]
    return []


CHECKS: dict[str, list[Callable]] = {
    "QuantizeLinear": [_check_qdq], "DequantizeLinear": [_check_qdq], "Resize": [_check_resize],
    "ScatterND": [_check_attr_equals("reduction", ("none",), "only reduction='none'")],
    "TopK": [_check_topk], "MaxPool": [_check_pool], "AveragePool": [_check_pool], "LpPool": [_check_pool],
    "LayerNormalization": [_check_layernorm], "Constant": [_check_constant], "LSTM": [_check_lstm],
    "Einsum": [_check_einsum], "CumSum": [_const_input(1, "axis")], "Pad": [_const_input(3, "axes")],
    "Squeeze": [_const_input(1, "axes")], "Unsqueeze": [_const_input(1, "axes")],
    "Dropout": [_const_input(2, "training_mode")], "OneHot": [_const_input(1, "depth")],
    **{op: [_const_input(1, "axes")] for op in SUPPORTED if op.startswith("Reduce")},
}


def _check_types(node, ctx: _Context) -> list[Issue]:
    group = GROUPS[SUPPORTED[node.op_type].types]
    data = _input(node, 1 if node.op_type == "Where" else 0)
    code = ctx.dtype(data) if data else None
    if group is None or code is None:
        return []
    name = DTYPES.get(code)
    if name in group or (name == "FP64" and "FP32" in group):  # FP64 is cast down (reported graph-wide)
        return []
    return [_issue(node, "dtype", f"input {data!r} is {name or ONNX_TYPE_NAMES.get(code, code)}; "
                   f"TensorRT takes {', '.join(sorted(group))} here")]


def _check_node(node, ctx: _Context) -> list[Issue]:
    if node.domain not in DEFAULT_DOMAINS:
        if (node.domain, node.op_type) in ctx.functions:
            return []  # a model-local function: its body is checked with the functions
        return [_issue(node, "domain", f"op of domain {node.domain!r}: TensorRT parses the default ONNX domain "
                       "only (a custom domain needs a plugin)")]
    if node.op_type not in SUPPORTED:
        later = LATER.get(node.op_type)
        hint = f"supported from TensorRT {later}, not by 10.3 (Jetson)" if later else "not supported by TensorRT"
        return [_issue(node, "unsupported-op", hint)]
    out = _check_types(node, ctx)
    for check in CHECKS.get(node.op_type, ()):
        out += check(node, ctx)
    return out


# -- graph-wide checks -----------------------------------------------------------------------------

def _check_opset(model) -> list[Issue]:
    out = []
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS and not MIN_OPSET <= imp.version <= MAX_OPSET:
            out.append(Issue("error", "opset", f"default-domain opset {imp.version}: TensorRT 10.3's parser reads "
                             f"opsets {MIN_OPSET}..{MAX_OPSET} (dsocr exports {OPSET})"))
    return out


def _check_dtypes(ctx: _Context) -> list[Issue]:
    by_type: dict[int, list[str]] = {}
    for name, code in ctx.dtypes.items():
        by_type.setdefault(code, []).append(name)
    out = []
    for code, names in sorted(by_type.items()):
        trt = DTYPES.get(code)
        example = f"{len(names)} tensor(s), e.g. {sorted(names)[0]!r}"
        if trt is None and code != 0:
            out.append(Issue("error", "dtype", f"{ONNX_TYPE_NAMES.get(code, code)} is not a TensorRT type ({example})"))
        elif trt == "FP64":
            out.append(Issue("warning", "dtype", f"float64 is cast down to float32 with clamping ({example})"))
        elif trt == "BF16":
            out.append(Issue("warning", "dtype", f"bfloat16 needs an Ampere or newer GPU, sm_80+ ({example})"))
        elif trt == "UINT8" and any(n not in ctx.io for n in names):
            out.append(Issue("warning", "dtype", f"uint8 is supported only as a network input/output ({example})"))
    return out


def _check_external_data(model, base_dir: Path) -> list[Issue]:
    from onnx.external_data_helper import uses_external_data

    missing = set()
    for t in model.graph.initializer:
        if uses_external_data(t):
            location = {e.key: e.value for e in t.external_data}.get("location", "")
            if not (base_dir / location).is_file():
                missing.add(location)
    return [Issue("error", "external-data", f"external data file {m!r} is missing next to the graph")
            for m in sorted(missing)]


def check_graph(model_or_path) -> list[Issue]:
    """Every reason the TensorRT 10.3 / 11.x ONNX parser would refuse (errors) or bend (warnings) this graph.

    model_or_path: an onnx.ModelProto or a path; a path is loaded without its external data (cheap
    for multi-GB graphs), whose files are then only checked for presence.
    """
    try:
        import onnx
    except ImportError as e:
        from dsocr.runtime.errors import BackendUnavailableError

        raise BackendUnavailableError("onnx is needed to check graphs: pip install 'dsocr[trt]'") from e

    base_dir = None
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - any decode failure is one issue, not a crash
            return [Issue("error", "load", f"{path} is not a readable ONNX model: {e}")]
        base_dir = path.parent
    else:
        model = model_or_path
    ctx = _Context(model, base_dir)
    issues = _check_opset(model) + _check_dtypes(ctx)
    if base_dir is not None:
        issues += _check_external_data(model, base_dir)
    for node in _all_nodes(model.graph):
        issues += _check_node(node, ctx)
    for fn in model.functions:
        for node in fn.node:
            issues += _check_node(node, ctx)
    return issues


def check_bundle(bundle_dir: str | Path, verify_files: bool = False) -> dict[str, list[Issue]]:
    """check_graph over every graph of a bundle's manifest: {graph key: issues}."""
    from dsocr.runtime.manifest import read_manifest

    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle, verify_files=verify_files)
    return {key: check_graph(bundle / spec.file) for key, spec in manifest.graphs.items()}


def render_table() -> str:
    """The supported-op table as Markdown (appended to this module's docstring)."""
    ops = sorted(SUPPORTED, key=str.lower)
    rows = [f"| {op} | {SUPPORTED[op].types} | {SUPPORTED[op].restriction} |" for op in ops]
    return "\n".join(["| op | types | restriction |", "|---|---|---|", *rows])


__doc__ = (__doc__ or "") + "\n" + render_table() + "\n"
