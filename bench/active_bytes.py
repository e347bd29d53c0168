"""Bytes a decode step must read, per precision: the decode ceiling's numerator.

A step reads every decoder weight once, except the routed experts, of which only the top-k of E are
read: active bytes = sum(non-expert weights) + k/E * sum(routed-expert weights) + the KV cache prefix
(2 * layers * H * hd * 4 bytes per cached position, fp32) + one embedding row. Weight bytes come from
the decoder graph's own initializers (packed 4/8-bit codes + fp32 block scales for MatMulNBits), so the
figure is exact for what that bundle stores.

For the real config the weight part is (ARCHITECTURE §5): 574,127,360 active parameters x bytes per
parameter: fp32 4; weight-only int8 with block 32 and one fp32 scale per block 1 + 4/32 = 1.125;
int4 0.5 + 4/32 = 0.625, here with the lm_head (165,478,400) at 8 bits and the 11 routers (901,120)
kept fp32.
"""
from __future__ import annotations

from pathlib import Path

import onnx

from dsocr.runtime.manifest import read_manifest

ACTIVE_PARAMS = 574_127_360  # real config, incl. lm_head (ARCHITECTURE §5)
LM_HEAD_PARAMS = 165_478_400
ROUTER_PARAMS = 901_120
BYTES_PER_PARAM = {"fp32": 4.0, "int8": 1.0 + 4 / 32, "int4": 0.5 + 4 / 32}


def formula_bytes(precision: str) -> float:
    """Weight bytes per token of the real config from the formula above (no KV, no embedding row)."""
    if precision == "fp32":
        return ACTIVE_PARAMS * 4.0
    head = BYTES_PER_PARAM["int8"] * LM_HEAD_PARAMS
    rest = ACTIVE_PARAMS - LM_HEAD_PARAMS - ROUTER_PARAMS
    return head + 4.0 * ROUTER_PARAMS + BYTES_PER_PARAM[precision] * rest


def _nbytes(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def graph_bytes(bundle: str | Path) -> dict:
    """Decoder weight bytes of a bundle split into routed experts and everything else."""
    bundle = Path(bundle)
    m = read_manifest(bundle, verify_files=False)
    g = onnx.load(str(bundle / m.graphs["decoder"].file), load_external_data=False).graph
    experts = other = 0
    for t in g.initializer:
        if ".mlp.experts." in t.name:
            experts += _nbytes(t)
        else:
            other += _nbytes(t)
    return {"routed_expert_bytes": experts, "other_bytes": other, "layers": m.kv.num_layers,
            "kv_bytes_per_position": 2 * m.kv.num_layers * m.kv.num_heads * m.kv.head_dim * 4,
            "embed_row_bytes": m.hidden_size * 4}


def active_bytes(bundle: str | Path, top_k: int, n_experts: int, mean_context: float) -> dict:
    b = graph_bytes(bundle)
    weights = b["other_bytes"] + b["routed_expert_bytes"] * top_k / n_experts
    kv = b["kv_bytes_per_position"] * mean_context
    return {**b, "weight_bytes": weights, "kv_bytes": kv, "total_bytes": weights + kv + b["embed_row_bytes"]}
