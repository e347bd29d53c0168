"""OCR-2 precision variants: the Qwen2 encoder's fp32 islands (RMSNorms, mask Add before the softmax) and a
fp16 variant of the OCR-2 demo bundle that keeps them fp32 and runs."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto

from dsocr.calibration.precision import encoder_forced_nodes, fp16_forced_nodes, load_structure


@pytest.fixture(scope="module")
def fp16_bundle(ocr2_demo_bundle, calib_pages, calib_cache):
    from dsocr.calibration.variants import PrecisionOptions, build_variants, variant_dir

    opts = PrecisionOptions(decoder_steps=2, sensitivity=False, probe_feeds=2, cache_dir=calib_cache, progress=False)
    build_variants(ocr2_demo_bundle, ("fp16",), calib_pages, opts, "2 synthetic pages")
    return variant_dir(ocr2_demo_bundle, "fp16")


def test_encoder_islands(ocr2_demo_bundle, demo_bundle):
    g = load_structure(ocr2_demo_bundle / "vision_1024.onnx").graph
    forced = encoder_forced_nodes(g)
    assert forced == fp16_forced_nodes(g, "vision", 1)
    for scope in ("layers.0/input_layernorm", "layers.1/post_attention_layernorm", "norm"):
        assert any(n.startswith(f"/qwen2_model/{scope}/") for n in forced), scope
    adds = {n for n in forced if "/self_attn/" in n}
    assert len(adds) == 2 and all(n.split("/")[-1].startswith("Add") for n in adds)  # one mask Add per layer
    assert not any(n.startswith("/sam_model/") for n in forced)
    v1 = load_structure(next(demo_bundle.glob("vision_*.onnx"))).graph
    assert encoder_forced_nodes(v1) == set()


def test_fp16_variant_keeps_the_islands_fp32_and_runs(fp16_bundle, ocr2_demo_bundle, calib_pages):
    from dsocr.runtime.pipeline import Pipeline

    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp16_bundle / "vision_1024.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    pow_out = next(n.output[0] for n in model.graph.node if n.name == "/qwen2_model/layers.0/input_layernorm/Pow")
    assert types[pow_out] == TensorProto.FLOAT
    halves = [n for n in model.graph.node if n.op_type == "MatMul" and types.get(n.output[0]) == TensorProto.FLOAT16]
    assert halves  # the rest is fp16
    ref, got = Pipeline(ocr2_demo_bundle), Pipeline(fp16_bundle)
    assert got.manifest.generation == "ocr2"
    e1, _ = ref.image_embeddings(calib_pages[0], ref.mode(None))
    e2, _ = got.image_embeddings(calib_pages[0], got.mode(None))
    cos = (e1 * e2).sum(-1) / np.linalg.norm(e1, axis=-1) / np.linalg.norm(e2, axis=-1)
    assert cos.min() > 0.999
