"""Explicit int8 Q/DQ graphs for strongly typed TensorRT (10.3 on JetPack 6 and 11.x) and ONNX Runtime.

onnxruntime.quantization's `quantize_static` writes the graph: QDQ format, int8 activations and
weights, symmetric (zero points 0), weights per output channel (MatMul [K, N] along N, Conv along
its output channels), activations per tensor, biases left fp32. Only MatMul/Conv/Gemm nodes with a constant weight
are quantized (W8A8 linear layers; attention's activation x activation products stay fp32), minus
the nodes kept in fp32 (the lm_head, router gates, and what the sensitivity rule picks).
Ranges come from the calibration cache (stats.py), so quantizing never re-runs calibration.

`check_qdq_symmetric(model)` verifies the result: every Q/DQ has an int8 zero point of 0, positive
finite scales, per-tensor activation scales, per-channel weight scales and weights in [-127, 127].
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

from dsocr.runtime.errors import DsocrError

from .groups import always_fp32, weighted_nodes
from .stats import OP_TYPES, method_of, quiet_ort

# QuantizeBias False: biases stay fp32 (an int32 bias DQ is not a TensorRT Q/DQ type: int8/fp8/int4 only).
# OpTypesToExcludeOutputQuantization: Q/DQ on layer inputs only; a Q/DQ on a MatMul's output would round
# its fp32 result to int8 again before the bias add / residual (TensorRT places Q/DQ at inputs too).
QDQ_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
               "OpTypesToExcludeOutputQuantization": list(OP_TYPES)}


class QDQError(DsocrError):
    """A Q/DQ graph that TensorRT's strongly typed, symmetric int8 path would not accept."""


def quantizable(graph) -> dict[str, str]:
    """Weighted nodes that may be quantized at all -> {node: weight} (lm_head and routers left out)."""
    return {n: w for n, w in weighted_nodes(graph).items() if not always_fp32(w)}


def quantize_int8(src: str | Path, dst: str | Path, ranges: str | Path, method: str, nodes: Sequence[str],
                  external_data: bool = False) -> Path:
    """Write `src` with int8 Q/DQ on `nodes` to `dst` (weights in `<dst>.data` when external_data).

    ranges: a range file in onnxruntime's calibration-cache format (stats.Ranges.path)."""
    dst = Path(dst)
    if not nodes:  # nothing to quantize: the fp32 graph itself (quantize_static would quantize all)
        save_model(onnx.load(str(src)), dst, external_data)
        return dst
    with quiet_ort():
        quantize_static(
            str(src), str(dst), calibration_data_reader=None, calibration_cache_path=str(ranges),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            per_channel=True, reduce_range=False, calibrate_method=method_of(method),
            op_types_to_quantize=list(OP_TYPES), nodes_to_quantize=list(nodes),
            use_external_data_format=external_data, extra_options=dict(QDQ_OPTIONS),
        )
    return dst


def restore_fp32(quantized: onnx.ModelProto, fp32: onnx.ModelProto, nodes: Iterable[str],
                 still_quantized: Iterable[str]) -> onnx.ModelProto:
    """A copy of `quantized` where `nodes` read their original fp32 inputs again, as if they had been
    left out of nodes_to_quantize (still_quantized: the nodes that stay int8). onnxruntime points every
    consumer of a quantized tensor at its DequantizeLinear; once no int8 node reads that tensor, its
    other consumers get the fp32 tensor back too. Unused Q/DQ nodes and weights are dropped.
    Cheaper than re-quantizing for every candidate the sensitivity rule measures."""
    nodes, still = set(nodes), set(still_quantized)
    out = onnx.ModelProto()
    out.CopyFrom(quantized)
    original = {n.name: n for n in fp32.graph.node if n.name in nodes}
    weights = {t.name: t for t in fp32.graph.initializer}
    have = {t.name for t in out.graph.initializer}
    for n in out.graph.node:
        if n.name in original:
            del n.input[:]
            n.input.extend(original[n.name].input)
            for name in n.input:
                if name in weights and name not in have:
                    out.graph.initializer.append(weights[name])
                    have.add(name)
    _unquantize_orphans(out.graph, still)
    _prune(out.graph)
    return out


def _unquantize_orphans(graph, still: set[str]) -> None:
    producer = {o: n for n in graph.node for o in n.output}
    source = {}  # activation DQ output -> the fp32 tensor its Q read
    for n in graph.node:
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            source[n.output[0]] = q.input[0]
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            if i in source:
                readers.setdefault(i, []).append(n)
    for dq_out, nodes in readers.items():
        if not any(n.name in still for n in nodes):
            for n in nodes:
                for k, name in enumerate(n.input):
                    if name == dq_out:
                        n.input[k] = source[dq_out]


def _prune(graph) -> None:
    """Drop Q/DQ nodes whose outputs are unused, then initializers nothing reads."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in used]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def save_model(model: onnx.ModelProto, path: Path, external_data: bool) -> None:
    """Save to `path`, weights in `<path>.data` when external_data (stale files removed first)."""
    for f in (path, path.with_name(path.name + ".data")):
        f.unlink(missing_ok=True)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


# -- the check ---------------------------------------------------------------------------------------

def _constants(graph) -> dict[str, np.ndarray]:
    out = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = a.t
    return out


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


OUTPUT_CHANNEL_AXIS = {"MatMul": 1, "Gemm": 1, "Conv": 0}  # weight [K, N] / [N, K] transB=0 / [O, I, kh, kw]


def _check_node(node, consts, reader_op: str | None = None) -> list[str]:
    where = f"{node.op_type} {node.name!r}"
    if len(node.input) < 3 or not node.input[2]:
        return [f"{where}: no zero point (ONNX then means uint8; TensorRT needs an int8 zero point of 0)"]
    zp, scale = consts.get(node.input[2]), consts.get(node.input[1])
    if zp is None or scale is None:
        return [f"{where}: zero point or scale is not a constant"]
    problems = []
    if zp.data_type != onnx.TensorProto.INT8:
        problems.append(f"{where}: zero point is {onnx.TensorProto.DataType.Name(zp.data_type)}, not INT8")
    s, z = numpy_helper.to_array(scale), numpy_helper.to_array(zp)
    if np.any(z != 0):
        problems.append(f"{where}: zero point is not 0 (asymmetric)")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        problems.append(f"{where}: scales must be positive and finite")
    weight = consts.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
    if weight is None:  # an activation: one scale for the whole tensor
        if s.size != 1:
            problems.append(f"{where}: activation scale has {s.size} values, expected per-tensor (1)")
        return problems
    w = numpy_helper.to_array(weight)
    axis = _axis(node) % w.ndim
    if s.size != 1 and (s.ndim != 1 or s.shape[0] != w.shape[axis]):
        problems.append(f"{where}: {s.size} weight scales do not match axis {axis} of {w.shape}")
    elif s.size > 1 and reader_op in OUTPUT_CHANNEL_AXIS and axis != OUTPUT_CHANNEL_AXIS[reader_op]:
        problems.append(f"{where}: per-channel along axis {axis}, not the {reader_op}'s output channels")
    if w.dtype == np.int8 and w.size and int(w.min()) < -127:
        problems.append(f"{where}: weight uses -128 (symmetric int8 is [-127, 127])")
    return problems


def check_qdq_symmetric(model: onnx.ModelProto | str | Path) -> list[str]:
    """Problems with the graph's Q/DQ nodes (empty when all are symmetric int8 as TensorRT wants)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    consts = _constants(model.graph)
    reader = {i: n.op_type for n in model.graph.node for i in n.input}
    problems = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            problems += _check_node(node, consts, reader.get(node.output[0]))
    return problems


def qdq_summary(model: onnx.ModelProto) -> dict[str, int]:
    """Counts for the manifest: Q and DQ nodes, and how many weights are per-channel int8."""
    consts = _constants(model.graph)
    q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    per_channel = sum(1 for n in dq if n.input[0] in consts and numpy_helper.to_array(consts[n.input[1]]).size > 1)
    return {"quantize_linear": q, "dequantize_linear": len(dq), "int8_weights_per_channel": per_channel}


def assert_qdq_symmetric(model: onnx.ModelProto, what: str) -> None:
    problems = check_qdq_symmetric(model)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise QDQError(f"{what}: Q/DQ is not symmetric int8: " + "; ".join(problems[:5]) + more)

