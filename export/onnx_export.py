"""PyTorch -> ONNX for the three graph kinds (vision per size, token embedding, decoder with KV I/O).

Letters: B batch, S view side, g token grid, T new tokens, P cached tokens, D hidden, V vocab.
Graphs are opset 17, static except for the named symbolic dims, with standard ops only (see
parser_support.py); size-dependent tables are frozen to constants before tracing.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import onnx
import torch
from torch import nn

from dsocr.calibration.moe import META_KEY as MOE_META_KEY
from dsocr.runtime.manifest import GraphSpec, TensorSpec
from dsocr.runtime.modes import DOWNSAMPLE, PATCH

from .model.decoder import MoE
from .model.ocr import DeepseekOCR
from .onnx_weights import attach_weights, stacked_regions

OPSET = 17
EXTERNAL_DATA_THRESHOLD = 256 << 20  # bytes of initializers above which weights go to <graph>.onnx.data
# (inline weights cost two more copies while saving: the full-size token table, 0.62 GB, took +1.85 GiB)


class _Vision(nn.Module):
    def __init__(self, model: DeepseekOCR):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [B,3,S,S] -> [B, g*g, D]
        return self.model.encode_views(pixel_values)


class _Embed(nn.Module):
    def __init__(self, model: DeepseekOCR):
        super().__init__()
        self.embed_tokens = model.model.embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [B,T] -> [B,T,D]
        return self.embed_tokens(input_ids)


class _Decoder(nn.Module):
    def __init__(self, model: DeepseekOCR):
        super().__init__()
        self.model = model

    def forward(self, inputs_embeds, cos, sin, attention_mask, *past):
        logits, pk, pv = self.model.decode(inputs_embeds, cos, sin, attention_mask, list(past[0::2]), list(past[1::2]))
        out = [logits]
        for k, v in zip(pk, pv):
            out += [k, v]
        return tuple(out)


def kv_names(num_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kv}.{i}" for i in range(num_layers) for kv in ("key", "value")]


class _WeightsAsInputs(nn.Module):
    """`module`, traced with its weights as trailing graph inputs: the tracer maps a tensor to the
    graph value it was given as, so the very parameter objects passed as arguments are recorded as
    inputs, not as module state.

    The TorchScript exporter's shape inference keeps a copy of every parameter value it is handed
    (measured: +0.7 GiB per routed-expert layer, 22-23 GiB peak and an OOM kill for the full-size
    decoder on 24 GiB); graph inputs carry no values, so tracing costs the model plus activations."""

    def __init__(self, module: nn.Module, names: list[str]):
        super().__init__()
        object.__setattr__(self, "inner", module)  # not a submodule: its weights are no state of this one
        self.names = names

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        """The wrapped module's tree, so that the exporter's scope names (hence node names: the
        calibration groups and the QMoE scopes key on them) are those of tracing `inner` itself."""
        yield prefix, self
        for name, m in self.inner.named_modules(memo, prefix, remove_duplicate):
            if m is not self.inner:
                yield name, m

    def forward(self, *args):
        n = len(args) - len(self.names)
        return self.inner(*args[:n])  # args[n:] are the very tensors self.inner reads


def _save(module: nn.Module, args: tuple, path: Path, names_in, names_out, dynamic_axes,
          rename: Callable[[str], str], metadata: dict[str, str] | None = None,
          reuse: dict | None = None) -> dict:
    """Trace the structure only (weights as graph inputs), then attach the weights streaming; graphs
    whose weights exceed EXTERNAL_DATA_THRESHOLD keep them in one `<graph>.onnx.data` file."""
    params = dict(module.named_parameters(remove_duplicate=False))
    params.update(module.named_buffers(remove_duplicate=False))
    names = list(params)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            _WeightsAsInputs(module, names), tuple(args) + tuple(params[k] for k in names), str(raw), dynamo=False,
            opset_version=OPSET, input_names=list(names_in) + names, output_names=names_out,
            dynamic_axes=dynamic_axes, export_params=False, do_constant_folding=False,
        )
        proto = onnx.load(str(raw))
    big = sum(t.numel() * 4 for t in params.values()) > EXTERNAL_DATA_THRESHOLD
    placed = attach_weights(proto, params, rename, path.with_name(path.name + ".data") if big else None, reuse)
    onnx.helper.set_model_props(proto, metadata or {})
    onnx.save_model(proto, str(path))
    return placed  # where the weights written to <graph>.onnx.data lie (attach_weights)


def _strip(prefix: str) -> Callable[[str], str]:
    """Map a wrapper's parameter name to the checkpoint key."""
    return lambda name: name[len(prefix):] if name.startswith(prefix) else name


def export_vision(model: DeepseekOCR, size: int, path: Path) -> GraphSpec:
    model.freeze_tables(size)
    g = size // PATCH // DOWNSAMPLE
    d = model.config.projector_out
    x = torch.zeros(1, 3, size, size)
    dyn = {"pixel_values": {0: "batch"}, "image_features": {0: "batch"}}
    _save(_Vision(model), (x,), path, ["pixel_values"], ["image_features"], dyn, _strip("model."))
    return GraphSpec(
        role="vision", file=path.name, size=size,
        inputs=[TensorSpec("pixel_values", "float32", ["batch", 3, size, size])],
        outputs=[TensorSpec("image_features", "float32", ["batch", g * g, d])],
    )


def export_embed(model: DeepseekOCR, path: Path) -> GraphSpec:
    d = model.config.decoder.hidden_size
    ids = torch.zeros(1, 4, dtype=torch.int64)
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "inputs_embeds": {0: "batch", 1: "seq"}}
    _save(_Embed(model), (ids,), path, ["input_ids"], ["inputs_embeds"], dyn, lambda n: "model." + n)
    return GraphSpec(
        role="embed", file=path.name,
        inputs=[TensorSpec("input_ids", "int64", ["batch", "seq"])],
        outputs=[TensorSpec("inputs_embeds", "float32", ["batch", "seq", d])],
    )


PREFILL_FORMULATION = "sparse"  # bench/moe_formulations.py: fewest seconds at prefill lengths
STEP_FORMULATION = "gather"  # decode steps: static shapes, only the selected experts (bench/decode_kernels.py)


def release_freed_memory() -> None:
    """Hand memory that was freed back to the OS (glibc: malloc_trim). Tensors of a few MB come from
    the heap, whose free space glibc keeps: without this, the experts' weights freed by stacking
    stayed resident (full size: +0.88 GB per layer, 21.3 GiB peak RSS for `dsocr-export build`)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


@contextlib.contextmanager
def moe_formulation(model: nn.Module, formulation: str):
    """Every MoE of `model` computes `formulation` (MoE.FORMULATIONS) inside the block."""
    if formulation not in MoE.FORMULATIONS:
        raise ValueError(f"formulation={formulation!r}: choose one of {', '.join(MoE.FORMULATIONS)}")
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    if formulation == "gather":
        for m in moes:
            m.stack_experts()
            release_freed_memory()  # the experts' own weights, now views into the stacks
    before = [m.formulation for m in moes]
    for m in moes:
        m.formulation = formulation
    try:
        yield
    finally:
        for m, f in zip(moes, before):
            m.formulation = f


def export_decoder(model: DeepseekOCR, path: Path, formulation: str = PREFILL_FORMULATION,
                   role: str = "decoder", placed: dict | None = None, reuse: dict | None = None) -> GraphSpec:
    """The decoder with KV I/O; role "decoder" (any T, the prefill graph) or "decoder_step" (decode
    steps: T = 1..slots new tokens per sequence), its MoE traced as `formulation`. `placed` (a dict)
    receives where the weights went (onnx_weights.attach_weights); `reuse` points tensors at bytes
    another graph wrote."""
    cfg = model.config.decoder
    n, h, hd, d = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size
    t, p = 3, 2  # trace sizes; both axes are symbolic in the graph
    args = (torch.zeros(1, t, d), torch.ones(1, t, hd), torch.zeros(1, t, hd), torch.zeros(1, 1, t, p + t))
    args += tuple(torch.zeros(1, p, h, hd) for _ in range(2 * n))
    past, present = kv_names(n, "past"), kv_names(n, "present")
    names_in = ["inputs_embeds", "cos", "sin", "attention_mask"] + past
    names_out = ["logits"] + present
    dyn = {"inputs_embeds": {0: "batch", 1: "seq"}, "cos": {0: "batch", 1: "seq"}, "sin": {0: "batch", 1: "seq"},
           "attention_mask": {0: "batch", 2: "seq", 3: "total"}, "logits": {0: "batch"}}
    dyn.update({k: {0: "batch", 1: "past"} for k in past})
    dyn.update({k: {0: "batch", 1: "seq"} for k in present})
    meta = {}
    if formulation == "gather":  # how the routed scopes route (calibration/moe.py lowers them to QMoE)
        meta[MOE_META_KEY] = json.dumps({"scope": "mlp/routed", "top_k": cfg.num_experts_per_tok,
                                         "norm_topk_prob": cfg.norm_topk_prob,
                                         "routed_scaling_factor": cfg.routed_scaling_factor,
                                         "experts": cfg.n_routed_experts})
    with moe_formulation(model, formulation):
        where = _save(_Decoder(model), args, path, names_in, names_out, dyn, _strip("model."), meta, reuse)
    if placed is not None:
        placed.update(where)
    kv = lambda name, s: TensorSpec(name, "float32", ["batch", s, h, hd])  # noqa: E731
    return GraphSpec(
        role=role, file=path.name,
        inputs=[
            TensorSpec("inputs_embeds", "float32", ["batch", "seq", d]),
            TensorSpec("cos", "float32", ["batch", "seq", hd]),
            TensorSpec("sin", "float32", ["batch", "seq", hd]),
            TensorSpec("attention_mask", "float32", ["batch", 1, "seq", "total"]),
        ] + [kv(k, "past") for k in past],
        outputs=[TensorSpec("logits", "float32", ["batch", cfg.vocab_size])] + [kv(k, "seq") for k in present],
    )


def export_decoder_step(model: DeepseekOCR, path: Path, prefill_placed: dict | None = None) -> GraphSpec:
    """The decode-step decoder (role "decoder_step"): same I/O as the decoder, MoE as STEP_FORMULATION.
    prefill_placed: the prefill graph's placements (export_decoder's `placed`, same folder): its
    expert regions become the step graph's stacks, not a second copy of the routed experts."""
    reuse = stacked_regions(prefill_placed or {}, model.config.decoder.n_routed_experts)
    return export_decoder(model, path, STEP_FORMULATION, role="decoder_step", reuse=reuse)
