"""build_engines + TrtBackend on a simulated device (trt_sim: host memory, ONNX Runtime as the engine).

What this covers without a GPU: engines.json as written by the builder and checked by the backend,
profile choice, batch chunking, the device KV cache bound by pointer offsets with its masked dummy
slot, and parity with the ORT backend on the same bundle. What it cannot cover: TensorRT itself.
"""
import json
import sys

import numpy as np
import pytest


import trt_sim  # noqa: E402

from dsocr.engines import build as B  # noqa: E402
from dsocr.engines.profiles import ProfileOptions  # noqa: E402
from dsocr.runtime.backends import trt as T  # noqa: E402
from dsocr.runtime.backends.ort import OrtBackend  # noqa: E402
from dsocr.runtime.errors import EngineMismatchError, InputError, ManifestError  # noqa: E402
from dsocr.runtime.kv_cache import KVCache  # noqa: E402
from dsocr.runtime.manifest import read_manifest  # noqa: E402

GPU = ("Simulated GPU", "8.7")


@pytest.fixture
def sim(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", trt_sim.tensorrt())
    monkeypatch.setattr(T, "_import_cuda", lambda: trt_sim.cuda)
    monkeypatch.setattr(T, "gpu_info", lambda device=0: GPU)
    monkeypatch.setattr(B, "gpu_info", lambda device=0: GPU)


@pytest.fixture
def engines(sim, demo_bundle, tmp_path):
    out = tmp_path / "engines"
    B.build_engines(demo_bundle, out, B.EngineBuildOptions(progress=True))
    return out


def test_engines_json(engines, demo_bundle):
    rec = json.loads((engines / T.ENGINES_NAME).read_text())
    manifest = read_manifest(demo_bundle, verify_files=False)
    assert rec["tensorrt_version"] == "10.3.0.30" and rec["gpu"] == {"name": GPU[0], "compute_capability": GPU[1]}
    assert set(rec["plans"]) == set(manifest.graphs) and rec["past_pad"] == T.PAST_PAD
    dec = rec["plans"]["decoder"]
    assert dec["profile_names"] == ["decode", "prefill"]
    assert dec["onnx"]["sha256"] == manifest.files["decoder.onnx"]["sha256"]
    assert (engines / B.TIMING_CACHE).is_file()
    for entry in rec["plans"].values():
        assert entry["bytes"] == (engines / entry["file"]).stat().st_size


def test_parity_with_ort(engines, demo_bundle):
    manifest = read_manifest(demo_bundle, verify_files=False)
    trt, ort = T.TrtBackend(demo_bundle, manifest, engines), OrtBackend(demo_bundle, manifest)
    rng = np.random.default_rng(0)
    size = manifest.graphs["vision_640"].size if "vision_640" in manifest.graphs else None
    if size:  # batch 3 against a batch-1 profile: run as three chunks
        pix = rng.standard_normal((3, 3, size, size)).astype(np.float32)
        np.testing.assert_allclose(trt.vision(pix), ort.vision(pix), rtol=1e-5, atol=1e-5)
    ids = rng.integers(0, manifest.vocab_size, (1, 9))
    np.testing.assert_array_equal(trt.embed(ids), ort.embed(ids))
    embeds = rng.standard_normal((7, manifest.hidden_size)).astype(np.float32)
    tokens = [3, 1, 4, 1, 5]
    got, cache = trt_sim.run_steps(trt, manifest, embeds, tokens)
    want, _ = trt_sim.run_steps(ort, manifest, embeds, tokens)
    assert cache.length == 7 + len(tokens)
    for g, w in zip(got, want):  # the masked dummy slot changes nothing (and reads no NaN garbage)
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_cache_filled_elsewhere_is_uploaded(engines, demo_bundle):
    manifest = read_manifest(demo_bundle, verify_files=False)
    trt, ort = T.TrtBackend(demo_bundle, manifest, engines), OrtBackend(demo_bundle, manifest)
    embeds = np.random.default_rng(1).standard_normal((5, manifest.hidden_size)).astype(np.float32)
    _, cache = trt_sim.run_steps(ort, manifest, embeds, [])  # prefill on ORT, continue on TensorRT
    same = copy_cache(cache, manifest)
    step = ort.embed(np.array([[7]]))[0]
    (got,), _ = trt_sim.run_steps(trt, manifest, step, [], cache)
    (want,), _ = trt_sim.run_steps(ort, manifest, step, [], same)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def copy_cache(cache, manifest):
    kv = manifest.kv
    new = KVCache(kv.num_layers, kv.num_heads, kv.head_dim, kv.max_seq_len)
    for a, b in zip(new.key + new.value, cache.key + cache.value):
        a[...] = b
    new.length = cache.length
    return new


def test_prompt_beyond_the_profile(sim, demo_bundle, tmp_path):
    out = tmp_path / "engines"
    B.build_engines(demo_bundle, out, B.EngineBuildOptions(progress=False, profiles=ProfileOptions(max_prompt=4)))
    manifest = read_manifest(demo_bundle, verify_files=False)
    trt = T.TrtBackend(demo_bundle, manifest, out)
    embeds = np.zeros((6, manifest.hidden_size), np.float32)
    with pytest.raises(InputError, match="outside every optimization profile"):
        trt_sim.run_steps(trt, manifest, embeds, [])


def test_mismatches_are_refused(engines, demo_bundle, monkeypatch):
    manifest = read_manifest(demo_bundle, verify_files=False)
    path = engines / T.ENGINES_NAME
    rec = json.loads(path.read_text())
    monkeypatch.setattr(T, "gpu_info", lambda device=0: ("Other GPU", "9.0"))
    with pytest.raises(EngineMismatchError, match="sm_87.*sm_90"):
        T.TrtBackend(demo_bundle, manifest, engines)
    monkeypatch.setattr(T, "gpu_info", lambda device=0: GPU)
    rec["plans"]["embed"]["onnx"]["sha256"] = "0" * 64
    path.write_text(json.dumps(rec))
    with pytest.raises(EngineMismatchError, match="built from another embed.onnx"):
        T.TrtBackend(demo_bundle, manifest, engines)
    path.unlink()
    with pytest.raises(ManifestError, match="build the TensorRT engines first"):
        T.TrtBackend(demo_bundle, manifest, engines)


def test_if_stale_rebuilds_only_when_needed(engines, demo_bundle, monkeypatch):
    from click.testing import CliRunner

    from dsocr.engines.__main__ import main

    assert B.engines_current(demo_bundle, engines)
    args = ["build", "--bundle", str(demo_bundle), "--out", str(engines), "--if-stale", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "nothing to build" in result.output, result.output
    monkeypatch.setattr(B, "gpu_info", lambda device=0: ("Other GPU", "9.0"))  # e.g. the card was swapped
    assert not B.engines_current(demo_bundle, engines)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "plan(s) with TensorRT 10.3.0.30" in result.output, result.output
    assert json.loads((engines / T.ENGINES_NAME).read_text())["gpu"]["compute_capability"] == "9.0"


def test_pipeline_on_the_tensorrt_backend(sim, demo_bundle, tmp_path):
    """Pipeline(backend="tensorrt") finds <bundle>/engines and generates what the ORT backend does."""
    from importlib.resources import files

    from dsocr.runtime.decoding import GenerationOptions
    from dsocr.runtime.pipeline import Pipeline, RunOptions

    import shutil

    bundle = tmp_path / "bundle"  # a copy (symlinks out of a bundle are refused) plus an engines/ directory
    shutil.copytree(demo_bundle, bundle)
    B.build_engines(bundle, options=B.EngineBuildOptions(progress=False))
    assert (bundle / T.ENGINES_DIR / T.ENGINES_NAME).is_file()
    listed = read_manifest(bundle).files  # engines inside the bundle are listed and hash-checked
    assert {"engines/engines.json", "engines/decoder.plan", "engines/embed.plan"} <= set(listed)
    page = files("dsocr.runtime.data") / "sample_page.png"
    opts = RunOptions(generation=GenerationOptions(max_new_tokens=12))
    got = Pipeline(bundle, backend="tensorrt").generate(page.read_bytes(), opts)[1]
    want = Pipeline(bundle, backend="ort").generate(page.read_bytes(), opts)[1]
    assert got.ids == want.ids and len(got.ids) > 0


def test_alternating_caches_hand_over(engines, demo_bundle):
    """Two sequences on one backend: switching caches brings the previous one's entries home first."""
    manifest = read_manifest(demo_bundle, verify_files=False)
    trt, ort = T.TrtBackend(demo_bundle, manifest, engines), OrtBackend(demo_bundle, manifest)
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((n, manifest.hidden_size)).astype(np.float32) for n in (4, 6))
    _, cache_a = trt_sim.run_steps(trt, manifest, a, [])
    _, cache_b = trt_sim.run_steps(trt, manifest, b, [])  # hands cache_a's entries back to the host
    (got_a,), _ = trt_sim.run_steps(trt, manifest, a[:1], [], cache_a)  # and cache_a comes back
    _, ref_a = trt_sim.run_steps(ort, manifest, a, [])
    (want_a,), _ = trt_sim.run_steps(ort, manifest, a[:1], [], ref_a)
    np.testing.assert_allclose(got_a, want_a, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cache_a.key[0][:, :4], ref_a.key[0][:, :4], rtol=1e-5, atol=1e-5)


def test_engines_inside_a_bundle_must_be_listed_and_stay_inside(sim, demo_bundle, tmp_path):
    import hashlib
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle, bundle)
    B.build_engines(bundle, options=B.EngineBuildOptions(progress=False))
    manifest_path = bundle / "manifest.json"
    m = json.loads(manifest_path.read_text())
    unlisted = dict(m, files={k: v for k, v in m["files"].items() if k != "engines/embed.plan"})
    manifest_path.write_text(json.dumps(unlisted))
    with pytest.raises(ManifestError, match="engines/embed.plan is not listed in the bundle's manifest.files"):
        T.TrtBackend(bundle, read_manifest(bundle))
    path = bundle / T.ENGINES_DIR / T.ENGINES_NAME
    rec = json.loads(path.read_text())
    rec["plans"]["embed"]["file"] = "../../outside.plan"
    path.write_text(json.dumps(rec))
    m["files"]["engines/engines.json"] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                          "bytes": path.stat().st_size}
    manifest_path.write_text(json.dumps(m))
    with pytest.raises(ManifestError, match=r"engines.plans.embed.file = \"../../outside.plan\" has an empty"):
        T.TrtBackend(bundle, read_manifest(bundle))
