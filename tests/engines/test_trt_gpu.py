"""Real TensorRT on a real GPU (marker `gpu`, deselected by default: run with -m gpu).

Skips cleanly where tensorrt, polygraphy or a GPU is missing.
"""
import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def trt():
    trt = pytest.importorskip("tensorrt")
    pytest.importorskip("polygraphy")
    from dsocr.runtime.backends.trt import gpu_info
    from dsocr.runtime.errors import BackendUnavailableError

    try:
        gpu_info()
    except BackendUnavailableError as e:
        pytest.skip(f"no usable GPU: {e}")
    return trt


def tiny_graph(path):
    """y = softmax(x @ W) with a dynamic batch: x [batch, 4] -> y [batch, 3]."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Softmax", ["m"], ["y"], axis=-1)], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [numpy_helper.from_array(w, "w")])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


def test_build_and_run_tiny_engine(trt, tmp_path):
    from polygraphy import cuda

    from dsocr.engines.build import build_engine
    from dsocr.engines.parser_support import check_graph
    from dsocr.engines.profiles import Profile
    from dsocr.runtime.backends.trt import _Engine

    w = tiny_graph(tmp_path / "tiny.onnx")
    assert check_graph(tmp_path / "tiny.onnx") == []
    profiles = [Profile("small", {"x": ((1, 4), (1, 4), (1, 4))}), Profile("batch", {"x": ((2, 4), (4, 4), (8, 4))})]
    plan = build_engine(tmp_path / "tiny.onnx", tmp_path / "tiny.plan", profiles,
                        timing_cache=tmp_path / "timing.cache", workspace_gb=0.5)
    assert plan.stat().st_size > 0 and (tmp_path / "timing.cache").stat().st_size > 0
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    stream = cuda.Stream()
    eng = _Engine(trt, runtime, plan, [p.to_json() for p in profiles], stream)
    for batch in (1, 5):  # one per profile
        x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
        ctx = eng.context({"x": x.shape})
        assert tuple(ctx.get_tensor_shape("y")) == (batch, 3)
        with cuda.DeviceArray(shape=x.shape, dtype=np.float32) as dx, \
                cuda.DeviceArray(shape=(batch, 3), dtype=np.float32) as dy:
            dx.copy_from(x, stream=stream)
            eng.run(ctx, {"x": dx.ptr, "y": dy.ptr})
            y = dy.copy_to(np.empty((batch, 3), np.float32), stream=stream)
            stream.synchronize()
        m = x @ w
        want = np.exp(m - m.max(-1, keepdims=True))
        np.testing.assert_allclose(y, want / want.sum(-1, keepdims=True), rtol=1e-3, atol=1e-5)


def test_demo_bundle_matches_ort(trt, demo_bundle, tmp_path):
    import trt_sim

    from dsocr.engines.build import EngineBuildOptions, build_engines
    from dsocr.runtime.backends.ort import OrtBackend
    from dsocr.runtime.backends.trt import TrtBackend
    from dsocr.runtime.manifest import read_manifest

    build_engines(demo_bundle, tmp_path / "engines", EngineBuildOptions(workspace_gb=2, progress=False))
    manifest = read_manifest(demo_bundle)
    got_backend = TrtBackend(demo_bundle, manifest, tmp_path / "engines")
    ort = OrtBackend(demo_bundle, manifest)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, manifest.vocab_size, (1, 9))
    np.testing.assert_allclose(got_backend.embed(ids), ort.embed(ids), rtol=1e-5, atol=1e-6)
    embeds = rng.standard_normal((7, manifest.hidden_size)).astype(np.float32)
    got, _ = trt_sim.run_steps(got_backend, manifest, embeds, [3, 1, 4])
    want, _ = trt_sim.run_steps(ort, manifest, embeds, [3, 1, 4])
    for g, w in zip(got, want):  # TF32 matmuls on the GPU: loose tolerance
        np.testing.assert_allclose(g, w, rtol=2e-2, atol=2e-2)
