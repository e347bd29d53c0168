"""Graph transforms per precision: fp16 with fp32 islands, and weight-only int8/int4 for CPUs.

fp16: onnxruntime.transformers.float16 (`keep_io_types=True`, so a bundle's I/O stays float32) with
a node block list; blocked nodes run in fp32. That converter rounds the value between two blocked
nodes through fp16 (Cast to fp16 after each, Cast back before the next); `fold_cast_round_trips`
removes those pairs so an fp32 island is fp32 end to end. The result uses standard ops and explicit
Casts only: a strongly typed TensorRT network takes its precisions as written.

Weight-only: onnxruntime's MatMulNBitsQuantizer, symmetric blocks along K; MatMul ->
com.microsoft.MatMulNBits, Gather -> com.microsoft.GatherBlockQuantized (4 bits only): contrib ops
that ONNX Runtime runs and TensorRT does not, so these graphs are for CPU edge devices.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import onnx
from onnx import TensorProto
from onnx.external_data_helper import load_external_data_for_model

from .groups import FP32_SCOPES, always_fp32, group_of, last_layer_groups, weighted_nodes
from .stats import quiet_ort

FP32_OPS = ("Softmax", "TopK")  # attention / router softmax as the official code (.float()), routing
# MatMulNBits accuracy_level 4: int8 activations inside the kernel, ORT's fast CPU path (level 0, fp32
# activations, is 3-150x slower at M=1: bench/fullsize_prepare.py); what the shipped variants use
ACCURACY_LEVEL = 4


def load_structure(path: str | Path) -> onnx.ModelProto:
    """The graph with shapes inferred but external weights not read (cheap for any size)."""
    model = onnx.load(str(path), load_external_data=False)
    return onnx.shape_inference.infer_shapes(model)


def load_with_shapes(path: str | Path) -> onnx.ModelProto:
    """Shape-inferred graph with its weights (inference runs before the weights are read, so graphs
    over protobuf's 2 GB limit work)."""
    model = load_structure(path)
    if any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
        load_external_data_for_model(model, str(Path(path).parent))
    return model


# -- fp16 -------------------------------------------------------------------------------------------

def fp16_forced_nodes(graph, role: str, keep_last_layers: int) -> set[str]:
    """Nodes every fp16 graph keeps in fp32: decoder RMSNorms, lm_head and what follows it to the
    logits, router gates, the last layers."""
    if role == "vision":
        return encoder_forced_nodes(graph)
    if role != "decoder":
        return set()
    last = last_layer_groups(graph, keep_last_layers)
    gates = {n for n, w in weighted_nodes(graph).items() if always_fp32(w)}
    forced = {n.name for n in graph.node if FP32_SCOPES.search(n.name) or group_of(n.name) in last or n.name in gates}
    return forced | _downstream(graph, {n for n in forced if n.startswith("/lm_head/")})


# OCR-2's Qwen2 encoder (inside its vision graphs): RMSNorms computed in fp32 as the official code does,
# and the Add of the additive attention mask (finfo(float32).min where blocked) feeding each fp32 Softmax.
ENCODER_FP32_SCOPES = re.compile(r"^/qwen2_model/(?:layers\.\d+/)?(input_layernorm|post_attention_layernorm|norm)/")


def encoder_forced_nodes(graph) -> set[str]:
    """Nodes of an OCR-2 vision graph kept fp32 (none in an OCR-1 graph: it has no /qwen2_model/ scope)."""
    forced = {n.name for n in graph.node if ENCODER_FP32_SCOPES.search(n.name)}
    producer = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        if n.op_type != "Softmax" or not n.name.startswith("/qwen2_model/"):
            continue
        p = producer.get(n.input[0])
        while p is not None and p.op_type == "Cast":
            p = producer.get(p.input[0])
        if p is not None and p.op_type == "Add":  # scores * scale + mask
            forced.add(p.name)
    return forced


def _downstream(graph, names: set[str]) -> set[str]:
    """Nodes fed (transitively) by `names`: the logits' tail after the lm_head (e.g. its final Cast)."""
    tensors = {o for n in graph.node if n.name in names for o in n.output}
    out: set[str] = set()
    for n in graph.node:  # nodes are in topological order
        if tensors & set(n.input):
            out.add(n.name)
            tensors |= set(n.output)
    return out


def to_fp16(model: onnx.ModelProto, fp32_nodes: Iterable[str], fp32_ops: Iterable[str] = FP32_OPS) -> onnx.ModelProto:
    """fp16 graph (float32 I/O) with `fp32_nodes` and ops `fp32_ops` kept fp32. `model` is consumed
    and must carry inferred shapes (load_with_shapes)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with quiet_ort():
        out = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                       op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(fp32_ops),
                                       node_block_list=sorted(set(fp32_nodes)))
    fold_cast_round_trips(out.graph)
    topological_sort(out.graph)  # the converter appends some Casts after their consumers
    return out


def topological_sort(graph) -> None:
    """Reorder graph.node so that every node follows the producers of its inputs (the ONNX spec and
    onnx.checker require it), keeping the existing order wherever it is already valid (Kahn's
    algorithm, smallest index first). Hand-written: onnx_ir's TopologicalSortPass would round-trip the
    whole model, weights included, through its IR."""
    import heapq

    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    users: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for i, n in enumerate(nodes):
        for j in {producer[x] for x in n.input if x in producer}:
            users[j].append(i)
            waiting[i] += 1
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError(f"{graph.name or 'graph'}: a cycle among {len(nodes) - len(order)} nodes")
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def _elem_types(graph) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.value_info)
             + list(graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _cast_to(node) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def fold_cast_round_trips(graph) -> int:
    """x(fp32) -> Cast(fp16) -> Cast(fp32) -> y  becomes  x -> (y's consumers), or Identity(x) -> y when
    y is a graph output (the logits of an fp32 lm_head stay fp32). Returns the pairs folded."""
    types = _elem_types(graph)
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    folded = 0
    rename: dict[str, str] = {}
    for n in graph.node:
        if n.op_type != "Cast" or _cast_to(n) != TensorProto.FLOAT:
            continue
        first = producer.get(n.input[0])
        if first is None or first.op_type != "Cast" or _cast_to(first) != TensorProto.FLOAT16:
            continue
        if types.get(first.input[0]) != TensorProto.FLOAT:
            continue
        folded += 1
        if n.output[0] in outputs:  # a graph output keeps its name: Identity of the fp32 value
            n.op_type, n.input[0] = "Identity", first.input[0]
            del n.attribute[:]
        else:
            rename[n.output[0]] = first.input[0]
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    _drop_dead_casts(graph)
    return folded


def _drop_dead_casts(graph) -> None:
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


# -- weight-only ------------------------------------------------------------------------------------

def weight_only(model: onnx.ModelProto, bits: int, block_size: int = 32, lm_head_bits: int | None = 8,
                gather: bool = False, accuracy_level: int = ACCURACY_LEVEL) -> onnx.ModelProto:
    """MatMul weights -> `bits`-bit symmetric blocks (MatMulNBits, `accuracy_level`); router gates stay
    fp32; the lm_head gets `lm_head_bits` (None: fp32); gather=True also packs Gather tables (4 bits only)."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as e:  # e.g. onnx-ir, which onnxruntime's quantizer imports without declaring it
        from dsocr.runtime.errors import BackendUnavailableError

        raise BackendUnavailableError(f"the weight-only quantizer cannot be imported ({e}); "
                                      "install the calibration extra: pip install 'dsocr[calib]'") from e

    keep = {n: w for n, w in weighted_nodes(model.graph).items() if always_fp32(w)}
    heads = [n for n, w in keep.items() if "lm_head" in w]
    ops = ("MatMul", "Gather") if gather else ("MatMul",)
    with quiet_ort():
        q = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                 accuracy_level=accuracy_level, nodes_to_exclude=sorted(keep),
                                 op_types_to_quantize=ops,
                                 quant_axes=(("MatMul", 0), ("Gather", 1)))
        q.process()
        model = q.model.model
        if heads and lm_head_bits:
            # pass 1 turned every other weighted MatMul into MatMulNBits: excluding the gates leaves the heads
            q = MatMulNBitsQuantizer(model, bits=lm_head_bits, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level, nodes_to_exclude=sorted(set(keep) - set(heads)),
                                     op_types_to_quantize=("MatMul",))
            q.process()
            model = q.model.model
    return model
