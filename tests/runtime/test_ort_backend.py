"""OrtBackend's public seams: a SessionCache shared by backends, the I/O contract checked at load,
telemetry off unless asked for."""
import shutil

import numpy as np
import pytest

from dsocr.runtime.errors import ManifestError
from dsocr.runtime.manifest import read_manifest

ort = pytest.importorskip("onnxruntime")


def test_backends_share_one_session_cache(demo_bundle):
    from dsocr.runtime.backends.ort import OrtBackend, SessionCache

    m = read_manifest(demo_bundle)
    cache = SessionCache(demo_bundle, m)
    a, b = OrtBackend(demo_bundle, m, sessions=cache), OrtBackend(demo_bundle, m, sessions=cache)
    ids = np.array([[0, 5, 7]], dtype=np.int64)
    np.testing.assert_array_equal(a.embed(ids), b.embed(ids))
    files = [f for f, _ in cache.items()]
    assert files == [m.graphs["embed"].file]  # created once, lazily
    assert cache.get(m.graphs["embed"].file) is dict(cache.items())[m.graphs["embed"].file]


def test_configure_hook_sees_every_graph(demo_bundle):
    from dsocr.runtime.backends.ort import SessionCache

    seen = []
    cache = SessionCache(demo_bundle, read_manifest(demo_bundle), configure=lambda opts, f: seen.append(f))
    cache.load_all()
    assert sorted(seen) == sorted(g.file for g in cache.manifest.graphs.values())


def test_graph_that_breaks_the_contract_is_refused(demo_bundle, tmp_path):
    """A graph swapped for another one (hashes updated, so the file check passes) is refused at load."""
    from dsocr.runtime.backends.ort import SessionCache
    from dsocr.runtime.manifest import file_entries, write_manifest

    bundle = tmp_path / "b"
    shutil.copytree(demo_bundle, bundle)
    m = read_manifest(bundle)
    embed = m.graphs["embed"].file
    shutil.copyfile(bundle / embed, bundle / m.graphs["decoder"].file)
    files = dict(m.files)
    files.update(file_entries(bundle, [m.graphs["decoder"].file]))
    import dataclasses

    write_manifest(bundle, dataclasses.replace(m, files=files))
    cache = SessionCache(bundle, read_manifest(bundle))
    with pytest.raises(ManifestError, match=r"graph decoder .* inputs: missing \[.*'inputs_embeds'.*unexpected \['input_ids'\]"):
        cache.get(m.graphs["decoder"].file)


@pytest.mark.parametrize("env, expect_calls", [(None, 1), ("1", 0)])
def test_telemetry_is_off_unless_opted_in(monkeypatch, env, expect_calls):
    from dsocr.runtime.backends import ort as ort_backend

    calls = []
    monkeypatch.setattr(ort, "disable_telemetry_events", lambda: calls.append(1), raising=False)
    if env is None:
        monkeypatch.delenv(ort_backend.TELEMETRY_ENV, raising=False)
    else:
        monkeypatch.setenv(ort_backend.TELEMETRY_ENV, env)
    ort_backend.import_ort()
    assert len(calls) == expect_calls


def test_one_token_passes_run_on_the_step_graph_when_asked(demo_bundle, sample_page):
    """step_graph=True: prefill on `decoder`, one-token steps on `decoder_step` (same logits within
    1e-4 x max|ref|); the default for an fp32 bundle leaves the step graph unloaded."""
    from dsocr.runtime.backends.ort import OrtBackend, SessionCache
    from dsocr.runtime.decoding import GenerationOptions
    from dsocr.runtime.pipeline import BundleAssets, Pipeline, RunOptions

    assets = BundleAssets.load(demo_bundle)
    m = assets.manifest
    assert "decoder_step" in m.graphs
    runs = {}
    for step_graph in (False, True):
        cache = SessionCache(demo_bundle, m)
        backend = OrtBackend(demo_bundle, m, sessions=cache, step_graph=step_graph)
        pipe = Pipeline.compose(backend, assets.tokenizer, assets.layout, max_seq_len=256)
        prep = pipe.prepare(sample_page, RunOptions(generation=GenerationOptions(max_new_tokens=4)))
        pipe.runner.reset()
        logits = [pipe.runner.prefill(prep.embeds).copy()]
        for _ in range(4):
            logits.append(pipe.runner.step(int(np.argmax(logits[-1]))).copy())
        loaded = {f for f, _ in cache.items()}
        assert (m.graphs["decoder_step"].file in loaded) == step_graph and m.graphs["decoder"].file in loaded
        runs[step_graph] = np.stack(logits)
    ref, got = runs[False], runs[True]
    assert float(np.abs(got - ref).max() / np.abs(ref).max()) <= 1e-4
    assert OrtBackend(demo_bundle, m).step_graph is False  # fp32: targets the step graph at TensorRT only
