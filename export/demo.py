"""The built-in demo checkpoints (OCR-1 and OCR-2): the official structure at reduced sizes, weights from
the fixtures' deterministic rule, and a small byte-level tokenizer that has the official special tokens.

Their text output is meaningless: they exist so that build -> run works on a fresh machine with no
download. The real checkpoints are deepseek-ai/DeepSeek-OCR and deepseek-ai/DeepSeek-OCR-2 on Hugging Face.
"""
from __future__ import annotations

from pathlib import Path

import torch

from dsocr.export.demo_tokenizer import build_demo_tokenizer

from .model.ocr import model_class
from .weights import OPTIONAL_KEYS, write_rule_checkpoint

DEMO_VOCAB = 1024

# Same reduced sizes as shared/fixtures/tiny (official layout of config.json).
DEMO_CONFIG = {
    "architectures": ["DeepseekOCRForCausalLM"],
    "model_type": "deepseek_vl_v2",
    "_name_or_path": "dsocr/demo (reduced sizes, rule weights: output text is meaningless)",
    "projector_config": {"input_dim": 2048, "n_embed": 1280, "projector_type": "linear", "model_type": "mlp_projector"},
    "vision_config": {
        "image_size": 1024,
        "width": {
            "clip-l-14-224": {"heads": 16, "image_size": 224, "layers": 2, "patch_size": 14, "width": 1024},
            "sam_vit_b": {"downsample_channels": [512, 1024], "global_attn_indexes": [1, 3], "heads": 2,
                          "layers": 4, "width": 96},
        },
    },
    "tile_tag": "2D",
    "bos_token_id": 0,
    "eos_token_id": 1,
    "first_k_dense_replace": 1,
    "hidden_size": 1280,
    "intermediate_size": 512,
    "max_position_embeddings": 8192,
    "moe_intermediate_size": 64,
    "n_routed_experts": 8,
    "n_shared_experts": 2,
    "num_attention_heads": 10,
    "num_experts_per_tok": 3,
    "num_hidden_layers": 3,
    "num_key_value_heads": 10,
    "topk_method": "greedy",
    "use_mla": False,
    "vocab_size": DEMO_VOCAB,
    "torch_dtype": "float32",
}


# Same reduced sizes as shared/fixtures/ocr2-tiny (the real OCR-2 config.json layout): SAM as above with
# net_3 -> 896, the Qwen2 encoder with 2 layers and MLP 1024 (896 wide, 14/2 heads, the query tables as
# official), projector 896 -> 1280, the v1 demo's decoder.
DEMO_CONFIG_OCR2 = {
    **{k: v for k, v in DEMO_CONFIG.items() if k not in ("projector_config", "vision_config")},
    "architectures": ["DeepseekOCR2ForCausalLM"],
    "_name_or_path": "dsocr/demo-ocr2 (reduced sizes, rule weights: output text is meaningless)",
    "projector_config": {"input_dim": 896, "n_embed": 1280, "projector_type": "linear", "model_type": "mlp_projector"},
    "vision_config": {
        "image_size": 1024, "model_name": "deepencoderv2", "model_type": "vision",
        "width": {
            "qwen2-0-5b": {"dim": 896, "layers": 2, "intermediate_size": 1024},
            "sam_vit_b": {"downsample_channels": [512, 1024], "global_attn_indexes": [1, 3], "heads": 2,
                          "layers": 4, "width": 96},  # downsample_channels: stale in the real config too
        },
    },
}
DEMO_CONFIGS = {"ocr1": DEMO_CONFIG, "ocr2": DEMO_CONFIG_OCR2}


def state_shapes(config: dict, generation: str = "ocr1") -> dict[str, tuple[int, ...]]:
    """Every checkpoint key of the official layout for `config`, with its shape (no weights made)."""
    from dsocr.export.config import ModelConfig

    with torch.device("meta"):
        model = model_class(generation)(ModelConfig.from_dict(config, generation))
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in OPTIONAL_KEYS}


def write_demo_checkpoint(out_dir: str | Path, config: dict | None = None, generation: str = "ocr1") -> Path:
    """Write a demo checkpoint directory (config.json, model.safetensors, tokenizer.json) of `generation`."""
    if generation not in DEMO_CONFIGS:
        from dsocr.runtime.errors import InputError

        raise InputError(f"no demo checkpoint for generation {generation!r}; one of {', '.join(DEMO_CONFIGS)}")
    config = dict(config or DEMO_CONFIGS[generation])
    out = write_rule_checkpoint(out_dir, state_shapes(config, generation), config)
    build_demo_tokenizer(int(config["vocab_size"])).save(str(out / "tokenizer.json"))
    return out
