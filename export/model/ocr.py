"""DeepSeek-OCR as one torch module with the official state-dict layout.

Letters: B batch, T tokens, P cached tokens, D hidden (1280), V vocab, g token grid side.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsocr.export.config import ModelConfig
from dsocr.runtime.errors import CheckpointError
from dsocr.runtime.modes import DOWNSAMPLE, PATCH

from ..weights import OPTIONAL_KEYS, check_state_dict, detect_generation, load_state_dict
from .clip import ClipTrunk
from .decoder import DecoderLayer, RMSNorm
from .sam import SamEncoder


def _materialise_default(model: nn.Module, key: str) -> torch.Tensor:
    """Default value of a buffer of a meta-device model (only position_ids: an arange)."""
    n = dict(model.named_buffers())[key].shape[-1]
    return torch.arange(n)[None]


class Projector(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.layers = nn.Linear(d_in, d_out)  # projector_type "linear": one Linear with bias


class OCRBody(nn.Module):
    """Everything under the `model.` prefix of the checkpoint."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dec = cfg.decoder
        self.sam_model = SamEncoder(cfg.sam)
        self.vision_model = ClipTrunk(cfg.clip)
        self.projector = Projector(cfg.projector_in, cfg.projector_out)
        self.image_newline = nn.Parameter(torch.zeros(cfg.projector_out))
        self.view_seperator = nn.Parameter(torch.zeros(cfg.projector_out))  # (sic) official key
        self.embed_tokens = nn.Embedding(dec.vocab_size, dec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(dec, i) for i in range(dec.num_hidden_layers))
        self.norm = RMSNorm(dec.hidden_size, dec.rms_norm_eps)


class DeepseekOCR(nn.Module):
    generation = "ocr1"
    body = OCRBody  # the `model.` subtree

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = self.body(cfg)
        self.lm_head = nn.Linear(cfg.decoder.hidden_size, cfg.decoder.vocab_size, bias=False)

    @classmethod
    def from_pretrained(cls, ckpt_dir: str | Path, dtype: torch.dtype = torch.float32) -> "DeepseekOCR":
        """Strict load of an official checkpoint; dtype=torch.bfloat16 keeps bf16 weights as they are.

        On DeepseekOCR itself the generation is read from the checkpoint's keys and the matching class
        (DeepseekOCR or DeepseekOCR2) is built; on a subclass a checkpoint of the other generation is refused.
        """
        if not (Path(ckpt_dir) / "config.json").is_file():
            raise CheckpointError(f"no config.json at {Path(ckpt_dir) / 'config.json'}")
        generation = detect_generation(ckpt_dir)
        target = model_class(generation) if cls is DeepseekOCR else cls
        if target.generation != generation:
            raise CheckpointError(f"{ckpt_dir} is a DeepSeek-{generation.upper()} checkpoint, not {target.generation}")
        cfg = ModelConfig.from_file(ckpt_dir, generation)
        with torch.device("meta"):
            model = target(cfg)
        state = load_state_dict(ckpt_dir, dtype=dtype)
        check_state_dict({k: v.shape for k, v in model.state_dict().items()}, state)
        expected = model.state_dict()
        for key in OPTIONAL_KEYS & expected.keys():
            if key in state:
                state[key] = state[key].to(expected[key].dtype)  # float -> int64 truncates, as copy_ does
            else:
                state[key] = _materialise_default(model, key)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    @torch.no_grad()
    def freeze_tables(self, size: int) -> None:
        """Precompute every size-dependent table for an S x S view (before ONNX export)."""
        self.model.sam_model.freeze_tables(size)
        emb = self.model.vision_model.embeddings
        grid = size // PATCH // DOWNSAMPLE
        emb.frozen[grid] = emb.pos(grid)

    def layout_vectors(self) -> dict[str, np.ndarray]:
        """The learned layout embeddings, by their bundle (layout.npz) names: [D] each."""
        m = self.model
        return {"image_newline": m.image_newline.float().numpy(), "view_separator": m.view_seperator.float().numpy()}

    # --- vision -----------------------------------------------------------------------------
    def encode_views(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: [B, 3, S, S] normalised -> projected features [B, g*g, D]."""
        sam = self.model.sam_model(pixels)  # [B, 1024, g, g]
        clip = self.model.vision_model(sam)  # [B, g*g, 1024]
        feats = torch.cat([clip, sam.flatten(2).transpose(1, 2)], dim=-1)  # CLIP first, then SAM
        return self.model.projector.layers(feats)

    # --- decoder ----------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def decode(self, embeds, cos, sin, mask, past_k, past_v):
        """One decoder pass over T new tokens given P cached ones.

        embeds [B,T,D], cos/sin [B,T,hd], mask [B,1,T,P+T], past_k/v: lists of [B,P,H,hd]
        -> logits of the last position [B,V] (fp32), present_k/v: lists of [B,T,H,hd].
        """
        x = embeds
        present_k, present_v = [], []
        for layer, pk, pv in zip(self.model.layers, past_k, past_v):
            x, k, v = layer(x, cos, sin, mask, pk, pv)
            present_k.append(k)
            present_v.append(v)
        h = self.model.norm(x[:, -1])
        return self.lm_head(h).float(), present_k, present_v


def model_class(generation: str) -> type[DeepseekOCR]:
    """The model class of a generation ("ocr1" -> DeepseekOCR, "ocr2" -> DeepseekOCR2)."""
    from .ocr2 import DeepseekOCR2

    classes = {c.generation: c for c in (DeepseekOCR, DeepseekOCR2)}
    if generation not in classes:
        raise CheckpointError(f"unknown model generation {generation!r}; one of {', '.join(classes)}")
    return classes[generation]
