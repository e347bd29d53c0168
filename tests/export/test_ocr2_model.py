"""OCR-2 PyTorch model: generation from the keys, official key names and shapes, strict loading, and the
encoder's quirks (query table by token count, the SAM-bidirectional / query-causal mask) against the fixture."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dsocr.export.config import ModelConfig  # noqa: E402
from dsocr.export.model.ocr import DeepseekOCR  # noqa: E402
from dsocr.export.model.ocr2 import DeepseekOCR2  # noqa: E402
from dsocr.export.model.qwen2_encoder import encoder_mask  # noqa: E402
from dsocr.export.weights import detect_generation, read_keys_txt, write_rule_checkpoint  # noqa: E402
from dsocr.runtime.errors import CheckpointError, InputError  # noqa: E402


@pytest.fixture(scope="module")
def ocr2_keys(ocr2_fixture_dir):
    return read_keys_txt(ocr2_fixture_dir / "keys.txt")


@pytest.fixture(scope="module")
def ocr2_config(ocr2_fixture_dir):
    return json.loads((ocr2_fixture_dir / "config.json").read_text())


@pytest.fixture(scope="module")
def model(tmp_path_factory, ocr2_keys, ocr2_config):
    ckpt = write_rule_checkpoint(tmp_path_factory.mktemp("ocr2") / "ckpt", ocr2_keys, ocr2_config)
    return DeepseekOCR.from_pretrained(ckpt)


def test_generation_from_keys(ocr2_keys, fixture_dir):
    v1 = read_keys_txt(fixture_dir / "keys.txt")
    assert detect_generation(ocr2_keys) == "ocr2"
    assert detect_generation(v1) == "ocr1"
    with pytest.raises(CheckpointError, match="cannot tell"):
        detect_generation(set(ocr2_keys) | {"model.image_newline"})
    with pytest.raises(CheckpointError, match="cannot tell"):
        detect_generation(set(ocr2_keys) | {k for k in v1 if k.startswith("model.vision_model.")})


def test_fixture_keys_and_shapes(ocr2_keys, ocr2_config):
    with torch.device("meta"):
        m = DeepseekOCR2(ModelConfig.from_dict(ocr2_config, "ocr2"))
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == ocr2_keys


def test_key_names_match_the_released_ocr2_checkpoint(reference_dir):
    ref = reference_dir / "ocr2"
    released = set(json.loads((ref / "model.safetensors.index.json").read_text())["weight_map"])
    cfg = ModelConfig.from_file(ref, "ocr2")
    assert (cfg.qwen2.layers, cfg.qwen2.intermediate_size, cfg.sam.downsample_channels) == (24, 4864, (512, 896))
    with torch.device("meta"):
        m = DeepseekOCR2(cfg)
    assert set(m.state_dict()) == released
    assert m.model.qwen2_model.query_768.weight.shape == (144, 896)
    assert m.model.qwen2_model.query_1024.weight.shape == (256, 896)


def test_loads_as_ocr2_and_refuses_the_wrong_class(model, tmp_path, ocr2_keys, ocr2_config):
    assert isinstance(model, DeepseekOCR2) and model.generation == "ocr2"
    from dsocr.export.model.ocr import OCRBody  # noqa: F401  (v1 class stays importable)

    class V1Only(DeepseekOCR):
        pass

    ckpt = write_rule_checkpoint(tmp_path / "c", ocr2_keys, ocr2_config)
    with pytest.raises(CheckpointError, match="OCR2 checkpoint, not ocr1"):
        V1Only.from_pretrained(ckpt)


def test_strict_loading_names_a_missing_key(tmp_path, ocr2_keys, ocr2_config):
    shapes = dict(ocr2_keys)
    del shapes["model.qwen2_model.query_768.weight"]
    ckpt = write_rule_checkpoint(tmp_path / "c", shapes, ocr2_config)
    with pytest.raises(CheckpointError, match="missing keys: model.qwen2_model.query_768.weight"):
        DeepseekOCR.from_pretrained(ckpt)


def test_global_view_intermediates_match_the_fixture(model, ocr2_fixture_dir):
    gold = np.load(ocr2_fixture_dir / "golden.npz")
    from PIL import Image, ImageOps

    page = Image.open(ocr2_fixture_dir / "page_single.png").convert("RGB")
    view = ImageOps.pad(page, (1024, 1024), method=Image.Resampling.BICUBIC, color=(127, 127, 127))
    x = torch.from_numpy(((np.asarray(view, np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        sam = model.model.sam_model(x)
        enc = model.model.qwen2_model(sam)[0].numpy()
    ref_sam, ref_enc = gold["single.sam_out_global"], gold["single.encoder_out_global"]
    assert np.abs(sam.numpy() - ref_sam).max() <= 1e-4 * np.abs(ref_sam).max()
    assert np.abs(enc - ref_enc).max() <= 1e-4 * np.abs(ref_enc).max()


def test_mask_layout():
    m = encoder_mask(3).numpy()
    blocked = np.finfo(np.float32).min
    allowed = m == 0
    assert allowed[:3, :3].all() and (m[:3, 3:] == blocked).all()  # SAM rows: SAM tokens only
    assert allowed[3:, :3].all()  # queries see every SAM token
    assert (allowed[3:, 3:] == np.tril(np.ones((3, 3), bool))).all()  # and queries 0..i


def test_query_causality_and_the_query_choice(model):
    enc = model.model.qwen2_model
    sam = torch.randn(1, 896, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = enc(sam)[0]
        q = enc.query_1024.weight
        saved = q[100].clone()
        q[100] += 1.0
        moved = enc(sam)[0]
        q[100] = saved
        enc.query_768.weight.mul_(2.0)  # the 768 table does not touch a 1024 view
        same = enc(sam)[0]
        enc.query_768.weight.div_(2.0)
        sam2 = sam.clone()
        sam2[0, :, 15, 15] += 1.0  # the last SAM token reaches every query
        last = enc(sam2)[0]
    assert torch.equal(base[:100], moved[:100]) and not torch.allclose(base[100:], moved[100:])
    assert torch.equal(base, same)
    assert (torch.abs(last - base).amax(-1) > 0).all()
    with pytest.raises(InputError, match="not 100"):
        enc(torch.zeros(1, 896, 10, 10))
