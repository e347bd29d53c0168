"""Strict checkpoint loading: every missing, unexpected or mis-shaped key is named."""
import json

import numpy as np
import pytest
import torch

from dsocr.export.demo import DEMO_CONFIG, state_shapes
from dsocr.export.model.ocr import DeepseekOCR
from dsocr.export.weights import load_state_dict, rule_weight, write_rule_checkpoint
from dsocr.runtime.errors import CheckpointError


@pytest.fixture(scope="module")
def shapes():
    return state_shapes(DEMO_CONFIG)


def test_rule_weight_follows_the_fixture_rule():
    w = rule_weight("a.weight", (4, 8))
    rng = np.random.default_rng(__import__("zlib").crc32(b"a.weight"))
    np.testing.assert_array_equal(w, (rng.standard_normal((4, 8)) / np.sqrt(8)).astype(np.float32))
    assert abs(float(rule_weight("n.weight", (16,)).mean()) - 1.0) < 0.05  # norm gains around 1
    assert abs(float(rule_weight("n.bias", (16,)).mean())) < 0.05


def test_loads_sharded_checkpoint_and_keeps_bf16(tmp_path, shapes):
    ckpt = write_rule_checkpoint(tmp_path / "c", shapes, DEMO_CONFIG, shard_bytes=20 << 20)
    assert (ckpt / "model.safetensors.index.json").is_file()
    model = DeepseekOCR.from_pretrained(ckpt)
    key = "model.layers.0.self_attn.q_proj.weight"
    np.testing.assert_array_equal(model.state_dict()[key].numpy(), rule_weight(key, shapes[key]))
    state = load_state_dict(ckpt, dtype=None)
    assert state[key].dtype == torch.float32
    bf = DeepseekOCR.from_pretrained(ckpt, dtype=torch.bfloat16)
    assert bf.state_dict()[key].dtype == torch.bfloat16


@pytest.mark.parametrize("change, words", [
    ("drop", "missing keys: model.norm.weight"),
    ("extra", "unexpected keys: model.extra.weight"),
    ("shape", "mis-shaped keys: model.norm.weight"),
])
def test_strict_loading_names_the_bad_key(tmp_path, shapes, change, words):
    s = dict(shapes)
    if change == "drop":
        del s["model.norm.weight"]
    elif change == "extra":
        s["model.extra.weight"] = (3, 3)
    else:
        s["model.norm.weight"] = (7,)
    ckpt = write_rule_checkpoint(tmp_path / "c", s, DEMO_CONFIG)
    with pytest.raises(CheckpointError, match=words.replace(".", r"\.")):
        DeepseekOCR.from_pretrained(ckpt)


def test_truncated_safetensors_is_a_clear_error(tmp_path, shapes):
    ckpt = write_rule_checkpoint(tmp_path / "c", shapes, DEMO_CONFIG)
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        DeepseekOCR.from_pretrained(ckpt)


def test_missing_config_and_shard(tmp_path, shapes):
    with pytest.raises(CheckpointError, match="config.json"):
        DeepseekOCR.from_pretrained(tmp_path)
    ckpt = write_rule_checkpoint(tmp_path / "c", shapes, DEMO_CONFIG, shard_bytes=20 << 20)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    (ckpt / sorted(set(index["weight_map"].values()))[-1]).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        DeepseekOCR.from_pretrained(ckpt)


def test_reads_official_config_sizes(reference_dir):
    from dsocr.export.config import ModelConfig

    ref = reference_dir / "config.json"
    cfg = ModelConfig.from_file(ref)
    assert (cfg.decoder.num_hidden_layers, cfg.decoder.n_routed_experts, cfg.decoder.vocab_size) == (12, 64, 129280)
    assert (cfg.sam.width, cfg.sam.global_attn_indexes, cfg.clip.layers) == (768, (2, 5, 8, 11), 24)
    with torch.device("meta"):
        model = DeepseekOCR(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == 3_336_106_240  # ARCHITECTURE.md §5: exact parameter count of the release


def test_key_names_match_the_released_checkpoint(reference_dir):
    from dsocr.export.config import ModelConfig
    from dsocr.export.weights import OPTIONAL_KEYS

    ref = reference_dir
    released = set(json.loads((ref / "model.safetensors.index.json").read_text())["weight_map"])
    with torch.device("meta"):
        model = DeepseekOCR(ModelConfig.from_file(ref))
    ours = set(model.state_dict()) - OPTIONAL_KEYS
    assert ours == released
