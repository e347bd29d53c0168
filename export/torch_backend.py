"""The PyTorch model behind the runtime's Backend interface, so the same runtime pipeline (runner,
layout, decode loop) drives PyTorch and the exported graphs: parity then compares like with like.
"""
from __future__ import annotations

import numpy as np
import torch

from dsocr.runtime.backends.base import Backend
from dsocr.runtime.kv_cache import KVStep
from dsocr.runtime.manifest import GraphSpec, KVSpec, Manifest
from dsocr.runtime.modes import MODES, mode_names

from .model.ocr import DeepseekOCR


def model_manifest(model: DeepseekOCR, max_seq_len: int | None = None) -> Manifest:
    """An in-memory manifest describing `model` (no files): what a Backend needs to know."""
    cfg = model.config.decoder
    modes = mode_names(model.generation)
    sizes = sorted({s for m in modes for s in MODES[m].vision_sizes})
    graphs = {f"vision_{s}": GraphSpec("vision", f"<torch:{s}>", [], [], size=s) for s in sizes}
    return Manifest(
        modes=list(modes), precision="fp32", graphs=graphs, generation=model.generation,
        kv=KVSpec(cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim, "float32",
                  max_seq_len or cfg.max_position_embeddings),
        hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, rope_theta=cfg.rope_theta,
        special_tokens={}, prompts={}, tokenizer="", layout_file="",
    )


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: DeepseekOCR, max_seq_len: int | None = None):
        super().__init__(".", model_manifest(model, max_seq_len))
        self.model = model.eval().requires_grad_(False)

    def layout_vectors(self) -> tuple[np.ndarray | None, np.ndarray]:
        """(image_newline [D] or None (OCR-2 has none), view_separator [D])."""
        vec = self.model.layout_vectors()
        return vec.get("image_newline"), vec["view_separator"]

    @torch.no_grad()
    def _vision_impl(self, graph_file: str, pixel_values: np.ndarray) -> np.ndarray:
        return self.model.encode_views(torch.from_numpy(pixel_values)).float().numpy()

    @torch.no_grad()
    def _embed_impl(self, input_ids: np.ndarray) -> np.ndarray:
        return self.model.embed(torch.from_numpy(input_ids)).float().numpy()

    @torch.no_grad()
    def _decode_impl(self, embeds, cos, sin, mask, step: KVStep) -> np.ndarray:
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        past = [step.past(i) for i in range(step.num_layers)]
        logits, pk, pv = self.model.decode(
            t(embeds), t(cos), t(sin), t(mask), [t(k) for k, _ in past], [t(v) for _, v in past]
        )
        for i in range(step.num_layers):
            sk, sv = step.present(i)
            sk[...] = pk[i].numpy()
            sv[...] = pv[i].numpy()
        return logits.numpy()
