"""TrtBackend drives several slots (simulated device: host memory, ONNX Runtime as the engine): each
slot has its own region of the device KV cache; engines built batch 1 run a pass over n slots as n
one-slot passes, engines built with --slots N run it as one engine execution (regions lo..hi bound
whole, new entries scattered per slot), and the logits equal the ORT backend's batched passes."""
import dataclasses
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import trt_sim  # noqa: E402

from dsocr.engines import build as B  # noqa: E402
from dsocr.engines.profiles import ProfileOptions  # noqa: E402
from dsocr.runtime.backends import trt as T  # noqa: E402
from dsocr.runtime.backends.ort import OrtBackend  # noqa: E402
from dsocr.runtime.manifest import read_manifest  # noqa: E402
from dsocr.runtime.runner import BundleRunner  # noqa: E402

GPU = ("Simulated GPU", "8.7")


@pytest.fixture
def build(monkeypatch, demo_bundle, tmp_path):
    """build(slots) -> an engines directory whose decode profiles admit 1..slots slots."""
    monkeypatch.setitem(sys.modules, "tensorrt", trt_sim.tensorrt())
    monkeypatch.setattr(T, "_import_cuda", lambda: trt_sim.cuda)
    monkeypatch.setattr(T, "gpu_info", lambda device=0: GPU)
    monkeypatch.setattr(B, "gpu_info", lambda device=0: GPU)

    def make(slots: int = 1):
        out = tmp_path / f"engines-{slots}"
        B.build_engines(demo_bundle, out, B.EngineBuildOptions(progress=False, profiles=ProfileOptions(slots=slots)))
        return out

    return make


@pytest.fixture
def engines(build):
    return build(1)


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


def close(got, want):
    """Within 1e-4 of the reference's largest |logit|."""
    return np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def pair(demo_bundle, engines, slots, max_seq_len=64):
    manifest = read_manifest(demo_bundle, verify_files=False)
    trt = T.TrtBackend(demo_bundle, manifest, engines)
    runners = (BundleRunner(trt, max_seq_len=max_seq_len, slots=slots),
               BundleRunner(OrtBackend(demo_bundle, manifest), max_seq_len=max_seq_len, slots=slots))
    rng = np.random.default_rng(5)
    prompts = [rng.standard_normal((n, manifest.hidden_size)).astype(np.float32) * 0.1 for n in (9, 4, 7, 2)]
    return trt, runners, prompts


def fill(runner, prompts):
    return [runner.prefill_slot(s, p).copy() for s, p in enumerate(prompts)]


def steps(runner, plan):
    """plan: [(slots, ids)] -> (logits [n, V] of each pass, decoder executions of each pass)."""
    out, passes = [], []
    for slots, ids in plan:
        trt_sim.executions.clear()
        out.append(runner.step_slots(slots, ids).copy())
        passes.append(trt_sim.executions["decoder.onnx"])
    return out, passes


# every slot, a hole (slot 1 sits out), three consecutive slots, every slot again
PLAN = [([0, 1, 2, 3], [3, 4, 5, 6]), ([3, 0, 1, 2], [7, 8, 9, 10]), ([0, 2, 3], [11, 12, 13]),
        ([1, 2, 3], [14, 15, 16]), ([0, 1, 2, 3], [17, 18, 19, 20])]


def test_batched_engines_decode_every_slot_in_one_pass(build, demo_bundle):
    trt, (runner, ref), prompts = pair(demo_bundle, build(4), slots=4)
    assert trt.max_decode_batch == 4
    for g, w in zip(fill(runner, prompts), fill(ref, prompts)):
        assert close(g, w)
    got, passes = steps(runner, PLAN)
    want, _ = steps(ref, PLAN)
    assert passes == [1] * len(PLAN)  # 3-4 slots of different lengths: one engine execution each
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.isfinite(g).all() and close(g, w)
    assert runner.cache.lengths.tolist() == ref.cache.lengths.tolist() == [13, 8, 12, 7]
    assert not any(a.any() for a in runner.cache.key + runner.cache.value)  # entries stay on the device


def test_a_slot_one_position_off_fails_the_comparison(build, demo_bundle):
    """The tolerance catches a start shifted by one in one slot, and only in that slot's row."""
    _, (runner, ref), prompts = pair(demo_bundle, build(4), slots=4)
    fill(runner, prompts)
    fill(ref, prompts)
    runner.cache.lengths[2] += 1  # slot 2 starts one position late (RoPE, mask and write offset)
    got, passes = steps(runner, PLAN[:2])
    want, _ = steps(ref, PLAN[:2])
    assert passes == [1, 1]
    row = {s: r for r, s in enumerate(PLAN[0][0])}[2]
    assert np.isfinite(got[0]).all() and not close(got[0][row], want[0][row])
    for r in set(range(4)) - {row}:
        assert close(got[0][r], want[0][r])  # the other slots do not see it


def test_more_slots_than_the_profile_go_in_groups(build, demo_bundle):
    trt, (runner, ref), prompts = pair(demo_bundle, build(2), slots=4)
    assert trt.max_decode_batch == 2
    fill(runner, prompts)
    fill(ref, prompts)
    plan = [([0, 1, 2, 3], [3, 4, 5, 6]), ([0, 3], [7, 8]), ([1, 2], [9, 10])]
    got, passes = steps(runner, plan)
    want, _ = steps(ref, plan)
    assert passes == [2, 2, 1]  # 4 slots: two groups of 2; slots 0 and 3 lie 4 regions apart: one pass each
    for g, w in zip(got, want):
        assert close(g, w)


def test_batch_1_engines_run_one_pass_per_slot(engines, demo_bundle):
    trt, (runner, ref), prompts = pair(demo_bundle, engines, slots=4)
    assert trt.max_decode_batch == 1
    fill(runner, prompts)
    fill(ref, prompts)
    got, passes = steps(runner, PLAN)
    want, _ = steps(ref, PLAN)
    assert passes == [len(slots) for slots, _ in PLAN]
    for g, w in zip(got, want):
        assert close(g, w)


def test_engines_whose_decode_profile_stops_short_of_a_full_region(build, demo_bundle, monkeypatch):
    """Engines built before the decode profile reached PAST_PAD + S: slots > 1, but no full-region
    binding fits, so the backend says 1 and a pass over n slots still runs (n passes)."""
    original = B.graph_profiles

    def short(manifest, key, options):
        cut = manifest.kv.max_seq_len + T.PAST_PAD - 1
        out = []
        for p in original(manifest, key, options):
            shapes = {n: (lo, opt, tuple(min(d, cut) if n.startswith("past_") and k == 1 else
                                         min(d, cut + 1) if n == "attention_mask" and k == 3 else d
                                         for k, d in enumerate(hi)))
                      for n, (lo, opt, hi) in p.shapes.items()}
            out.append(dataclasses.replace(p, shapes=shapes))
        return out

    monkeypatch.setattr(B, "graph_profiles", short)
    trt, (runner, ref), prompts = pair(demo_bundle, build(4), slots=4, max_seq_len=None)
    dec = trt.record.plans["decoder"].profiles[0]
    assert dec["inputs_embeds"][2][0] == 4 and dec["past_key.0"][2][1] == trt.manifest.kv.max_seq_len
    assert trt.max_decode_batch == 1
    fill(runner, prompts)
    fill(ref, prompts)
    got, passes = steps(runner, PLAN[:2])
    want, _ = steps(ref, PLAN[:2])
    assert passes == [4, 4]
    for g, w in zip(got, want):
        assert close(g, w)
