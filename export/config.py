"""Model configuration read from a checkpoint's config.json (official Hugging Face layout).

The decoder sizes are the top-level keys (what the official remote code reads); the encoder sizes come
from ``vision_config.width.{sam_vit_b, clip-l-14-224}`` (OCR-1) or ``{sam_vit_b, qwen2-0-5b}`` (OCR-2) and
default to the official ones, which the official code hard-codes. Both generations share `model_type`:
the generation is read from the checkpoint's keys (weights.detect_generation) and passed in.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dsocr.runtime.errors import CheckpointError

GENERATIONS = ("ocr1", "ocr2")


@dataclass(frozen=True)
class SamConfig:
    width: int = 768
    layers: int = 12
    heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window: int = 14
    mlp_ratio: float = 4.0
    img_size: int = 1024  # pos_embed is (1, img_size/16, img_size/16, width)
    patch: int = 16
    neck_dim: int = 256
    downsample_channels: tuple[int, ...] = (512, 1024)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass(frozen=True)
class ClipConfig:
    width: int = 1024
    layers: int = 24
    heads: int = 16
    ffn: int = 4096
    image_size: int = 224
    patch: int = 14

    @property
    def grid(self) -> int:
        return self.image_size // self.patch


@dataclass(frozen=True)
class Qwen2EncoderConfig:
    """OCR-2's Qwen2-0.5B-style encoder (no token table); the official code hard-codes all but `hidden`."""

    layers: int = 24
    hidden: int = 896
    heads: int = 14
    kv_heads: int = 2
    intermediate_size: int = 4864
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    # learned query tables: checkpoint name suffix -> rows (= tokens of that view: (S/64)^2)
    queries: tuple[tuple[str, int], ...] = (("768", 144), ("1024", 256))

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 129280
    hidden_size: int = 1280
    num_hidden_layers: int = 12
    num_attention_heads: int = 10
    num_key_value_heads: int = 10
    intermediate_size: int = 6848
    moe_intermediate_size: int = 896
    n_routed_experts: int = 64
    num_experts_per_tok: int = 6
    n_shared_experts: int = 2
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    scoring_func: str = "softmax"
    topk_method: str = "greedy"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    bos_token_id: int = 0
    eos_token_id: int = 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_moe(self, layer: int) -> bool:
        return (
            self.n_routed_experts > 0
            and layer >= self.first_k_dense_replace
            and layer % self.moe_layer_freq == 0
        )


@dataclass(frozen=True)
class ModelConfig:
    sam: SamConfig = field(default_factory=SamConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    projector_in: int = 2048
    projector_out: int = 1280
    generation: str = "ocr1"  # "ocr1" (SAM + CLIP) or "ocr2" (SAM + Qwen2 encoder)
    qwen2: Qwen2EncoderConfig = field(default_factory=Qwen2EncoderConfig)  # ocr2 only

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], generation: str = "ocr1") -> "ModelConfig":
        if generation not in GENERATIONS:
            raise CheckpointError(f"unknown model generation {generation!r}; one of {', '.join(GENERATIONS)}")
        try:
            return _parse(cfg) if generation == "ocr1" else _parse_ocr2(cfg)
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"config.json is not a DeepSeek-OCR config: {e}") from e

    @classmethod
    def from_file(cls, path: str | Path, generation: str = "ocr1") -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise CheckpointError(f"no config.json at {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(data, generation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse_decoder(cfg: dict[str, Any]) -> DecoderConfig:
    lang = dict(cfg.get("language_config") or {})
    lang.update({k: v for k, v in cfg.items() if k in DecoderConfig.__dataclass_fields__})
    dec_kwargs = {k: lang[k] for k in DecoderConfig.__dataclass_fields__ if lang.get(k) is not None}
    if lang.get("use_mla"):
        raise ValueError("use_mla=true is DeepSeek-V2 MLA, not DeepSeek-OCR's MHA decoder")
    return DecoderConfig(**dec_kwargs)


def _parse_sam(sam_w: dict[str, Any], downsample_channels: tuple[int, ...] | None = None) -> SamConfig:
    return SamConfig(
        width=int(sam_w.get("width", 768)),
        layers=int(sam_w.get("layers", 12)),
        heads=int(sam_w.get("heads", 12)),
        global_attn_indexes=tuple(sam_w.get("global_attn_indexes", (2, 5, 8, 11))),
        downsample_channels=downsample_channels or tuple(sam_w.get("downsample_channels", (512, 1024))),
    )


def _parse_ocr2(cfg: dict[str, Any]) -> ModelConfig:
    """OCR-2: SAM (net_3 -> the Qwen2 width; the config's `downsample_channels` [512, 1024] is stale) + Qwen2."""
    decoder = _parse_decoder(cfg)
    width = (cfg.get("vision_config") or {}).get("width") or {}
    q_w = width.get("qwen2-0-5b") or {}
    qwen2 = Qwen2EncoderConfig(
        layers=int(q_w.get("layers", 24)),
        hidden=int(q_w.get("dim", 896)),
        intermediate_size=int(q_w.get("intermediate_size", 4864)),
    )
    sam = _parse_sam(width.get("sam_vit_b") or {}, downsample_channels=(512, qwen2.hidden))
    proj = cfg.get("projector_config") or {}
    return ModelConfig(
        sam=sam, decoder=decoder, qwen2=qwen2, generation="ocr2",
        projector_in=int(proj.get("input_dim", qwen2.hidden)),
        projector_out=int(proj.get("n_embed", decoder.hidden_size)),
    )


def _parse(cfg: dict[str, Any]) -> ModelConfig:
    decoder = _parse_decoder(cfg)
    width = (cfg.get("vision_config") or {}).get("width") or {}
    sam = _parse_sam(width.get("sam_vit_b") or {})
    clip_w = width.get("clip-l-14-224") or {}
    cw = int(clip_w.get("width", 1024))
    clip = ClipConfig(
        width=cw,
        layers=int(clip_w.get("layers", 24)),
        heads=int(clip_w.get("heads", 16)),
        ffn=int(clip_w.get("ffn", 4 * cw)),
        image_size=int(clip_w.get("image_size", 224)),
        patch=int(clip_w.get("patch_size", 14)),
    )
    proj = cfg.get("projector_config") or {}
    return ModelConfig(
        sam=sam,
        clip=clip,
        decoder=decoder,
        projector_in=int(proj.get("input_dim", 2048)),
        projector_out=int(proj.get("n_embed", decoder.hidden_size)),
    )
