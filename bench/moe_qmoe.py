"""One full-size MoE layer (64 experts of 1280->896->1280, top-6, + shared 1792) as ONNX Runtime
contrib QMoE vs the exported sparse formulation, both with 4-bit weights: what replacing the
per-expert node chains (64 x ~20 nodes per layer, most on empty tensors when decoding) with one
fused op would buy. Built by bench/moe_formulations.py.

The QMoE graph computes DeepSeek's routing exactly: softmax over all 64 router logits, top-6, the
top-6 probabilities as weights without renormalisation (passed as QMoE's router_weights input: with
router_probs alone the CPU kernel renormalises the top-k), SwiGLU experts (silu(gate) * up, fused
interleaved gate/up = swiglu_fusion 1, the CPU kernel's only layout); the shared expert and the
router stay ordinary MatMuls (quantized by MatMulNBitsQuantizer like the bundles' graphs, router fp32).

Letters: T tokens, D hidden (1280), I expert width (896), E experts (64), B quantization block (32).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BLOCK = 32
BITS = 4


def quantize_experts(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [E, N, K] (torch Linear layout: out x in) -> (packed uint4 [E, N, K/2], scales [E, N, K/B]):
    symmetric blocks of B along K, codes q + 8 in [1, 15], low nibble first (QMoE's default zero point 8)."""
    e, n, k = w.shape
    blocks = w.reshape(e, n, k // BLOCK, BLOCK)
    scale = np.abs(blocks).max(-1, keepdims=True) / 7.0
    scale[scale == 0] = 1.0
    codes = (np.clip(np.rint(blocks / scale), -7, 7) + 8).astype(np.uint8).reshape(e, n, k)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8), scale[..., 0].astype(np.float32)


def qmoe_model(moe) -> onnx.ModelProto:
    """A graph x [1, T, D] -> y [1, T, D] equal to `moe` (dsocr.export.model.decoder.MoE) up to int4."""
    t = lambda p: p.detach().float().numpy()  # noqa: E731
    experts = moe.experts
    gate = np.stack([t(x.gate_proj.weight) for x in experts])  # [E, I, D]
    up = np.stack([t(x.up_proj.weight) for x in experts])
    down = np.stack([t(x.down_proj.weight) for x in experts])  # [E, D, I]
    fc1 = np.empty((gate.shape[0], 2 * gate.shape[1], gate.shape[2]), np.float32)  # [E, 2I, D] interleaved
    fc1[:, 0::2], fc1[:, 1::2] = gate, up
    fc1_q, fc1_s = quantize_experts(fc1)
    fc2_q, fc2_s = quantize_experts(down)
    d = gate.shape[2]
    sh = moe.shared_experts
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (fc1_q, "fc1_q"), (fc1_s, "fc1_s"), (fc2_q, "fc2_q"), (fc2_s, "fc2_s"),
        (np.ascontiguousarray(t(moe.gate.weight).T), "router_T"),
        (np.ascontiguousarray(t(sh.gate_proj.weight).T), "sh_gate_T"),
        (np.ascontiguousarray(t(sh.up_proj.weight).T), "sh_up_T"),
        (np.ascontiguousarray(t(sh.down_proj.weight).T), "sh_down_T"),
        (np.array([-1, d], np.int64), "flat_shape"))]
    n = helper.make_node
    nodes = [
        n("Reshape", ["x", "flat_shape"], ["flat"]),
        n("MatMul", ["flat", "router_T"], ["logits"], name="router"),
        n("Softmax", ["logits"], ["probs"], axis=-1),
        n("QMoE", ["flat", "logits", "fc1_q", "fc1_s", "", "fc2_q", "fc2_s", "", "", "", "", "", "", "", "probs"],
          ["routed"], domain="com.microsoft", k=moe.top_k, activation_type="swiglu", swiglu_fusion=1,
          normalize_routing_weights=0, activation_alpha=1.0, activation_beta=0.0, expert_weight_bits=BITS,
          block_size=BLOCK, accuracy_level=4),
        n("MatMul", ["flat", "sh_gate_T"], ["g"]), n("Sigmoid", ["g"], ["sg"]), n("Mul", ["g", "sg"], ["silu"]),
        n("MatMul", ["flat", "sh_up_T"], ["u"]), n("Mul", ["silu", "u"], ["h"]),
        n("MatMul", ["h", "sh_down_T"], ["shared"]),
        n("Add", ["routed", "shared"], ["sum"]),
        n("Shape", ["x"], ["x_shape"]), n("Reshape", ["sum", "x_shape"], ["y"]),
    ]
    g = helper.make_graph(nodes, "qmoe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", d])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq", d])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def weight_only(model: onnx.ModelProto, n_experts: int, bits: int = BITS) -> onnx.ModelProto:
    """MatMuls with constant weights -> MatMulNBits (block 32, symmetric, accuracy_level 4); the
    router ([D, E] weight) stays fp32 (the bundles' rule, bench/fullsize_prepare.py)."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    inits = {t.name: t for t in model.graph.initializer}
    router = [nd.name for nd in model.graph.node if nd.op_type == "MatMul" and nd.input[1] in inits
              and tuple(inits[nd.input[1]].dims)[-1] == n_experts]
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=BLOCK, is_symmetric=True, accuracy_level=4,
                             nodes_to_exclude=router)
    q.process()
    return q.model.model
