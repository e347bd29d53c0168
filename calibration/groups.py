"""Node groups of the exported graphs: the unit that a precision rule keeps in fp32 or lowers.

The exporter names nodes by module scope (`/layers.2/mlp/experts.6/up_proj/MatMul`,
`/sam_model/blocks.0/attn/qkv/MatMul`, `/lm_head/MatMul`) and weights by checkpoint key
(`model.layers.2.self_attn.q_proj.weight__T`). A group is one transformer layer or block
(`layers.2`, `sam_model/blocks.0`, `vision_model/layers.1`), else the top-level scope
(`lm_head`, `norm`, `sam_model`, `layers` = the projector).
"""
from __future__ import annotations

import re
from typing import Iterable

_LAYER = re.compile(r"^/((?:[^/]+/)*?[^/]*?(?:layers|blocks)\.\d+)(?:/|$)")
_DECODER_LAYER = re.compile(r"^/layers\.(\d+)/")
WEIGHTED_OPS = {"MatMul": 1, "Conv": 1, "Gemm": 1}  # op -> index of its weight input

# Weights that stay fp32 in every lowered variant: the logits projection and the MoE router gates.
ALWAYS_FP32_WEIGHTS = (re.compile(r"(^|\.)lm_head\.weight"), re.compile(r"\.mlp\.gate\.weight"))
# Decoder scopes computed in fp32 by the official code (RMSNorm, .float() softmax) and the logits.
FP32_SCOPES = re.compile(r"/(input_layernorm|post_attention_layernorm|norm|lm_head)/")


def group_of(node_name: str) -> str:
    """`/layers.2/mlp/experts.6/up_proj/MatMul` -> `layers.2`; `/lm_head/MatMul` -> `lm_head`."""
    m = _LAYER.match(node_name)
    if m:
        return m.group(1)
    parts = [p for p in node_name.split("/") if p]
    return parts[0] if len(parts) > 1 else "(graph)"


def decoder_layer(node_name: str) -> int | None:
    m = _DECODER_LAYER.match(node_name)
    return int(m.group(1)) if m else None


def weighted_nodes(graph) -> dict[str, str]:
    """MatMul/Conv/Gemm nodes whose weight is an initializer -> {node name: weight name}."""
    inits = {t.name for t in graph.initializer}
    out = {}
    for n in graph.node:
        i = WEIGHTED_OPS.get(n.op_type)
        if i is not None and len(n.input) > i and n.input[i] in inits:
            out[n.name] = n.input[i]
    return out


def always_fp32(weight_name: str) -> bool:
    return any(p.search(weight_name) for p in ALWAYS_FP32_WEIGHTS)


def by_group(names: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(group_of(n), []).append(n)
    return out


def num_decoder_layers(graph) -> int:
    layers = {decoder_layer(n.name) for n in graph.node}
    layers.discard(None)
    return max(layers) + 1 if layers else 0


def last_layer_groups(graph, keep: int) -> set[str]:
    """The groups of the last `keep` decoder layers (`layers.<i>`)."""
    n = num_decoder_layers(graph)
    return {f"layers.{i}" for i in range(max(0, n - keep), n)}
