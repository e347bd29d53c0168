"""Decode-step graphs for ONNX Runtime on CPU: each MoE "gather" scope -> one com.microsoft.QMoE node.

The exporter's decode-step decoder (export/model/decoder.py, GatheredExperts) computes the routed
experts in the node scope `<layer>/mlp/routed/` from two tensors (flat [N, D] fp32, router logits
[N, E]) and three stacked weights (gate/up W^T [E, D, I], down W^T [E, I, D]); the graph's metadata
`dsocr.moe` says how it routes. Here that scope becomes QMoE with block-quantized experts: ORT's CPU
kernel reads only the selected experts' packed weights (a weight-only variant cannot keep the
standard-op scope: MatMulNBits needs a 2-D constant weight, and a gathered one is neither).

QMoE as used (ORT >= 1.22 CPU kernel, bench/moe_qmoe.py measured it): router_probs = the logits
(top-k by logit = top-k by probability), router_weights = softmax(logits) (the weights of the top-k
without renormalisation, normalize_routing_weights=0: DeepSeek-OCR's greedy routing), SwiGLU with
gate/up rows interleaved in fc1 (swiglu_fusion=1), symmetric blocks of `block_size` along K, codes
q + 2^(bits-1) (QMoE's default zero point), 4-bit codes two per byte, low nibble first.

Letters: N tokens, D hidden, I expert width, E experts, K reduction dim, B block size.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dsocr.runtime.errors import InputError

META_KEY = "dsocr.moe"  # written by export/onnx_export.py on decode-step graphs
SCOPE = re.compile(r"^(?P<mlp>(/.*)?/mlp)/routed/")
STACKS = ("stack_gate", "stack_up", "stack_down")
MS_DOMAIN = "com.microsoft"


def quantize_experts(w: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """w [E, N, K] fp32 -> (codes uint8 [E, N, K*bits/8], scales fp32 [E, N, K/B]), symmetric blocks along K."""
    e, n, k = w.shape
    if k % block:
        raise InputError(f"expert weights with K={k} do not split into blocks of {block}")
    top = 2 ** (bits - 1) - 1  # 7 or 127
    blocks = w.reshape(e, n, k // block, block)
    scale = np.abs(blocks).max(-1, keepdims=True) / top
    scale[scale == 0] = 1.0
    codes = (np.clip(np.rint(blocks / scale), -top, top) + top + 1).astype(np.uint8).reshape(e, n, k)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return np.ascontiguousarray(codes), scale[..., 0].astype(np.float32)


def routing(model: onnx.ModelProto) -> dict | None:
    """The exporter's routing record of a decode-step graph, or None when the graph has none."""
    raw = next((p.value for p in model.metadata_props if p.key == META_KEY), None)
    return json.loads(raw) if raw else None


def _scopes(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in graph.node:
        m = SCOPE.match(n.name)
        if m:
            out.setdefault(m.group("mlp"), []).append(n)
    return out


def _scope_io(graph, nodes, inits: dict) -> tuple[str, str, dict[str, str], str]:
    """-> (flat, logits, {stack kind: initializer}, output) of one routed scope."""
    produced = {o for n in nodes for o in n.output}
    names = {n.name for n in nodes}
    softmax = [n for n in nodes if n.op_type == "Softmax"]
    stacks = {k: n.input[0] for n in nodes for k in STACKS if n.op_type == "Gather" and n.input[0].endswith(k)}
    consts = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    flat = [n.input[0] for n in nodes if n.op_type == "Unsqueeze" and n.input[0] not in produced | consts]
    used_outside = {i for n in graph.node if n.name not in names for i in n.input} | {o.name for o in graph.output}
    outs = sorted(produced & used_outside)
    if len(softmax) != 1 or set(stacks) != set(STACKS) or len(set(flat)) != 1 or len(outs) != 1:
        raise InputError(f"MoE scope {nodes[0].name.rsplit('/', 1)[0]} is not the exporter's gather formulation")
    if any(s not in inits for s in stacks.values()):
        raise InputError("MoE expert stacks must be initializers")
    return flat[0], softmax[0].input[0], stacks, outs[0]


def lower_to_qmoe(model: onnx.ModelProto, bits: int, block_size: int, base_dir: str | Path) -> int:
    """Replace every routed scope of a decode-step graph with QMoE in place; -> layers lowered.

    Stacks are read one at a time (from `base_dir` when external) and dropped from the graph."""
    meta = routing(model)
    if meta is None:
        raise InputError(f"graph has no {META_KEY} metadata: not a decode-step decoder of this dsocr")
    if meta["norm_topk_prob"] or float(meta["routed_scaling_factor"]) != 1.0:
        raise InputError("QMoE lowering covers greedy softmax routing without renormalisation or scaling only")
    if bits not in (4, 8):
        raise InputError(f"QMoE packs 4 or 8 bits, not {bits}")
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    lowered = 0
    for mlp, nodes in _scopes(g).items():
        flat, logits, stacks, out = _scope_io(g, nodes, inits)
        arr = {k: numpy_helper.to_array(inits[v], str(base_dir)) for k, v in stacks.items()}
        gate, up, down = (arr[k].transpose(0, 2, 1) for k in STACKS)  # [E, I, D], [E, I, D], [E, D, I]
        fc1 = np.empty((gate.shape[0], 2 * gate.shape[1], gate.shape[2]), np.float32)  # [E, 2I, D] interleaved
        fc1[:, 0::2], fc1[:, 1::2] = gate, up
        del arr, gate, up
        q1, s1 = quantize_experts(fc1, bits, block_size)
        del fc1
        q2, s2 = quantize_experts(np.ascontiguousarray(down), bits, block_size)
        base = mlp.strip("/").replace("/", ".") + ".qmoe"
        new_inits = [numpy_helper.from_array(a, f"{base}.{n}") for a, n in ((q1, "fc1"), (s1, "fc1_scales"),
                                                                              (q2, "fc2"), (s2, "fc2_scales"))]
        probs = f"{mlp}/qmoe/router_weights"
        new_nodes = [
            helper.make_node("Softmax", [logits], [probs], name=f"{mlp}/qmoe/Softmax", axis=-1),
            # inputs: input, router_probs, fc1 (weights, scales, bias), fc2 (...), fc3 (...), zero points
            # (fc1, fc2, fc3), router_weights
            helper.make_node("QMoE", [flat, logits, new_inits[0].name, new_inits[1].name, "", new_inits[2].name,
                                      new_inits[3].name, "", "", "", "", "", "", "", probs], [out],
                             name=f"{mlp}/qmoe/QMoE",
                             domain=MS_DOMAIN, k=int(meta["top_k"]), activation_type="swiglu", swiglu_fusion=1,
                             normalize_routing_weights=0, activation_alpha=1.0, activation_beta=0.0,
                             expert_weight_bits=bits, block_size=block_size, accuracy_level=4),
        ]
        at = min(i for i, n in enumerate(g.node) if n in nodes)
        for n in nodes:
            g.node.remove(n)
        for i, n in enumerate(new_nodes):
            g.node.insert(at + i, n)
        for name in stacks.values():
            g.initializer.remove(inits.pop(name))
        g.initializer.extend(new_inits)
        lowered += 1
    if lowered and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return lowered
