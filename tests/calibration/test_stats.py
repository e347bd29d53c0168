"""Activation ranges: onnxruntime's calibrators over real feeds, cached by (graph, mode, method, pages)."""
import numpy as np
import pytest

from dsocr.calibration.feeds import bundle_feeds, vision_feeds
from dsocr.calibration.pages import page_set_hash
from dsocr.calibration.stats import CalibrationCache, CalibrationKey, activation_ranges
from dsocr.runtime.manifest import read_manifest


@pytest.fixture(scope="module")
def feeds(demo_bundle, calib_pages):
    return bundle_feeds(demo_bundle, calib_pages[:1], ["small"], decoder_steps=2)


def test_feeds_are_the_runtime_inputs(feeds, demo_bundle, calib_pages):
    assert feeds.count() == {"vision_640": 1, "decoder": 3}  # one global view; prefill + 2 steps
    np.testing.assert_array_equal(feeds.graphs["vision_640"][0]["pixel_values"],
                                  vision_feeds(calib_pages[:1], "small")[640][0]["pixel_values"])
    prefill, step = feeds.graphs["decoder"][0], feeds.graphs["decoder"][2]
    t = prefill["inputs_embeds"].shape[1]
    assert prefill["past_key.0"].shape[1] == 0 and prefill["attention_mask"].shape == (1, 1, t, t)
    assert step["inputs_embeds"].shape[1] == 1 and step["past_key.0"].shape[1] == t + 1
    m = read_manifest(demo_bundle)
    assert set(step) == {s.name for s in m.graphs["decoder"].inputs}


@pytest.mark.parametrize("method", ["max", "percentile", "entropy"])
def test_second_call_is_a_cache_hit(method, feeds, demo_bundle, calib_pages, tmp_path):
    m = read_manifest(demo_bundle)
    key = CalibrationKey(m.files["decoder.onnx"]["sha256"], "small", method, page_set_hash(calib_pages[:1]))
    cache = CalibrationCache(tmp_path)
    first = activation_ranges(demo_bundle / "decoder.onnx", feeds.graphs["decoder"], key, cache)
    assert not first.cached and first.path.is_file() and first.path.with_suffix(".meta.json").is_file()

    def no_inference():
        raise AssertionError("a cache hit must not need feeds")

    second = activation_ranges(demo_bundle / "decoder.onnx", no_inference, key, cache)
    assert second.cached and second.path == first.path
    assert second.data.data.keys() == first.data.data.keys()
    name = next(k for k in first.data.data if "lm_head" not in k)
    for a, b in zip(second.data.data[name].range_value, first.data.data[name].range_value):
        np.testing.assert_array_equal(a, b)
    other = CalibrationKey(key.graph_sha256, "small", method, "0" * 64)  # other pages: other entry
    assert cache.path(other) != cache.path(key) and cache.load(other) is None
