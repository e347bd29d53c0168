"""DeepSeek-OCR-2 as one torch module with the official state-dict layout.

`model.sam_model` (v1's SAM, net_3 -> 896), `model.qwen2_model` (Qwen2 encoder over SAM tokens +
learned queries), `model.projector.layers` (896 -> 1280), `model.view_seperator` (no image_newline),
then v1's decoder unchanged (`model.embed_tokens`, `model.layers.N`, `model.norm`, `lm_head`).
Letters: B batch, S view side (768 tile or 1024 global), n = (S/64)^2 tokens, D hidden (1280).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dsocr.export.config import ModelConfig
from dsocr.runtime.modes import DOWNSAMPLE, PATCH

from .decoder import DecoderLayer, RMSNorm
from .ocr import DeepseekOCR, Projector
from .qwen2_encoder import Qwen2Encoder
from .sam import SamEncoder


class OCR2Body(nn.Module):
    """Everything under the `model.` prefix of an OCR-2 checkpoint."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dec = cfg.decoder
        self.sam_model = SamEncoder(cfg.sam)  # downsample_channels (512, qwen2.hidden) from the config parser
        self.qwen2_model = Qwen2Encoder(cfg.qwen2)
        self.projector = Projector(cfg.projector_in, cfg.projector_out)
        self.view_seperator = nn.Parameter(torch.zeros(cfg.projector_out))  # (sic) official key
        self.embed_tokens = nn.Embedding(dec.vocab_size, dec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(dec, i) for i in range(dec.num_hidden_layers))
        self.norm = RMSNorm(dec.hidden_size, dec.rms_norm_eps)


class DeepseekOCR2(DeepseekOCR):
    generation = "ocr2"
    body = OCR2Body

    @torch.no_grad()
    def freeze_tables(self, size: int) -> None:
        """Precompute the size-dependent tables for an S x S view: SAM's and the encoder's mask/RoPE."""
        self.model.sam_model.freeze_tables(size)
        g = size // PATCH // DOWNSAMPLE
        self.model.qwen2_model.tables(g * g)

    def encode_views(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: [B, 3, S, S] normalised -> projected query outputs [B, n, D]."""
        sam = self.model.sam_model(pixels)  # [B, 896, S/64, S/64]
        return self.model.projector.layers(self.model.qwen2_model(sam))

    def layout_vectors(self) -> dict[str, np.ndarray]:
        return {"view_separator": self.model.view_seperator.float().numpy()}
