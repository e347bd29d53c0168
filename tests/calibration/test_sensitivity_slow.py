"""The measured fp32-group rule on the demo graphs (slow: many quantize/run rounds)."""
import numpy as np
import onnx
import pytest

from dsocr.calibration.feeds import vision_feeds
from dsocr.calibration.pages import page_set_hash
from dsocr.calibration.qdq import quantizable, quantize_int8, restore_fp32
from dsocr.calibration.sensitivity import session
from dsocr.calibration.stats import CalibrationCache, CalibrationKey, activation_ranges
from dsocr.calibration.variants import CalibrationSource, PrecisionOptions, build_variant
from dsocr.runtime.manifest import read_manifest

pytestmark = pytest.mark.slow


def test_int8_rule_meets_its_threshold_and_reruns_from_the_cache(demo_bundle, calib_pages, tmp_path):
    opts = PrecisionOptions(decoder_steps=2, probe_feeds=2, cache_dir=tmp_path / "cache", progress=False)
    m = build_variant(demo_bundle, tmp_path / "a", "int8", calib_pages, opts)
    for name, d in m.source["precision_detail"].items():
        if "score" not in d:
            continue
        threshold = opts.decoder_threshold if name == "decoder" else opts.vision_threshold
        groups = len(d["solo_error"])
        assert d["score"]["cosine"] >= threshold or len(d["trail"]) == max(1, int(opts.max_fp32_fraction * groups))
        assert [g for g, _ in d["trail"]] == list(d["solo_error"])[: len(d["trail"])]  # worst first
    calib = CalibrationSource(demo_bundle, calib_pages, opts.decoder_steps)
    again = build_variant(demo_bundle, tmp_path / "b", "int8", options=opts, calib=calib)
    assert calib._feeds is None  # ranges and choices came from the cache: no inference needed
    assert again.files["decoder.onnx"]["sha256"] == m.files["decoder.onnx"]["sha256"]


def test_restoring_groups_equals_quantizing_without_them(demo_bundle, calib_pages, tmp_path):
    src = demo_bundle / "vision_640.onnx"
    feeds = vision_feeds(calib_pages[:1], "small")[640]
    key = CalibrationKey(read_manifest(demo_bundle).files[src.name]["sha256"], "small", "max",
                         page_set_hash(calib_pages[:1]))
    ranges = activation_ranges(src, feeds, key, CalibrationCache(tmp_path / "cache")).path  # its own, never skipped
    fp32 = onnx.load(str(src))
    nodes = sorted(quantizable(fp32.graph))
    keep = [n for n in nodes if "/vision_model/" in n]
    quantize_int8(src, tmp_path / "all.onnx", ranges, "max", nodes)
    quantize_int8(src, tmp_path / "some.onnx", ranges, "max", [n for n in nodes if n not in keep])
    still = [n for n in nodes if n not in keep]
    assert keep and still, "the split must restore some groups and keep others quantized"
    onnx.save(restore_fp32(onnx.load(str(tmp_path / "all.onnx")), fp32, keep, still), tmp_path / "restored.onnx")
    feed = feeds[0]
    a = session(tmp_path / "some.onnx").run(None, feed)[0]
    b = session(tmp_path / "restored.onnx").run(None, feed)[0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    some, restored = onnx.load(str(tmp_path / "some.onnx")), onnx.load(str(tmp_path / "restored.onnx"))
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    assert count(restored, "QuantizeLinear") == count(some, "QuantizeLinear")
    assert count(restored, "DequantizeLinear") == count(some, "DequantizeLinear")
