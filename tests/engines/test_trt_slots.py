"""TrtBackend drives several slots (simulated device: host memory, ONNX Runtime as the engine): each
slot has its own region of the device KV cache, a pass over n slots runs as n one-slot passes (the
decoder profiles are batch 1), and the logits equal the ORT backend's batched passes."""
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import trt_sim  # noqa: E402

from dsocr.engines import build as B  # noqa: E402
from dsocr.runtime.backends import trt as T  # noqa: E402
from dsocr.runtime.backends.ort import OrtBackend  # noqa: E402
from dsocr.runtime.manifest import read_manifest  # noqa: E402
from dsocr.runtime.runner import BundleRunner  # noqa: E402

GPU = ("Simulated GPU", "8.7")


@pytest.fixture
def engines(monkeypatch, demo_bundle, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", trt_sim.tensorrt())
    monkeypatch.setattr(T, "_import_cuda", lambda: trt_sim.cuda)
    monkeypatch.setattr(T, "gpu_info", lambda device=0: GPU)
    monkeypatch.setattr(B, "gpu_info", lambda device=0: GPU)
    out = tmp_path / "engines"
    B.build_engines(demo_bundle, out, B.EngineBuildOptions(progress=False))
    return out


def script(runner, prompts):
    """Slot 0 prefilled and stepped alone, then slot 2 and slot 1 join; passes over all of them;
    slot 2 refilled with a shorter prompt while the others go on. -> every logits row, in order."""
    out = [runner.prefill_slot(0, prompts[0]).copy(), runner.step_slots([0], [3]).copy()]
    out.append(runner.prefill_slot(2, prompts[1]).copy())
    out.append(runner.step_slots([0, 2], [4, 5]).copy())
    out.append(runner.prefill_slot(1, prompts[2]).copy())
    for t in range(3):
        out.append(runner.step_slots([0, 1, 2], [6 + t, 7, 8]).copy())
    out.append(runner.prefill_slot(2, prompts[2][:3]).copy())
    out.append(runner.step_slots([0, 1, 2], [9, 10, 11]).copy())
    return out


def test_slots_on_tensorrt_equal_ort(engines, demo_bundle):
    manifest = read_manifest(demo_bundle, verify_files=False)
    trt, ort = T.TrtBackend(demo_bundle, manifest, engines), OrtBackend(demo_bundle, manifest)
    rng = np.random.default_rng(2)
    prompts = [rng.standard_normal((n, manifest.hidden_size)).astype(np.float32) * 0.1 for n in (9, 5, 6)]
    got = script(BundleRunner(trt, max_seq_len=64, slots=3), prompts)
    want = script(BundleRunner(ort, max_seq_len=64, slots=3), prompts)
    assert len(got) == len(want) == 10
    for g, w in zip(got, want):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    shifted = script(BundleRunner(ort, max_seq_len=64, slots=3), [prompts[1], prompts[0], prompts[2]])
    assert not np.allclose(shifted[-1], want[-1], rtol=1e-4, atol=1e-4)  # the comparison can fail
