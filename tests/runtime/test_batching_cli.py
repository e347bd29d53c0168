"""--batch end to end (same files as batch 1, resume, errors.jsonl), the default batch, and prompts
longer than the KV cache refused before anything that grows with them is computed."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from dsocr.runtime import engine as E
from dsocr.runtime.cli import main
from dsocr.runtime.decoding import GenerationOptions
from dsocr.runtime.errors import CacheOverflowError
from dsocr.runtime.manifest import read_manifest
from dsocr.runtime.pipeline import Pipeline, RunOptions
from dsocr.runtime.runner import BundleRunner

LONG_PROMPT = "<image>\n" + "x" * 20000


@pytest.fixture(scope="module")
def pages(tmp_path_factory, sample_page, sample_pdf):
    d = tmp_path_factory.mktemp("pages")
    shutil.copy(sample_page, d / "a.png")
    shutil.copy(sample_pdf, d / "b.pdf")
    (d / "c.png").write_bytes(b"not an image")
    return d


def _run(bundle, inputs, out, *extra):
    return CliRunner().invoke(main, ["run", "--model", str(bundle), str(inputs), "-o", str(out), "--quiet",
                                     "--max-new-tokens", "8", *extra])


def test_batch_writes_the_same_pages_as_batch_1_and_resumes(demo_bundle, pages, tmp_path):
    one, three = tmp_path / "one", tmp_path / "three"
    r1 = _run(demo_bundle, pages, one, "--batch", "1")
    r3 = _run(demo_bundle, pages, three, "--batch", "3")
    assert r1.exit_code == 1 and r3.exit_code == 1, (r1.output, r3.output)  # c.png fails in both
    mds = sorted(p.name for p in one.glob("*.md"))
    assert len(mds) >= 2 and mds == sorted(p.name for p in three.glob("*.md"))
    for name in mds:
        assert (one / name).read_text() == (three / name).read_text(), name
    errors = [json.loads(line) for line in (three / "errors.jsonl").read_text().splitlines()]
    assert [e["stem"] for e in errors] == ["c"]
    again = _run(demo_bundle, pages, three, "--batch", "3")
    page_mds = [n for n in mds if (three / n).with_suffix(".json").exists()]  # not the PDFs' joined documents
    assert f"0 page(s) done, {len(page_mds)} already done, 1 failed" in again.output


def test_batch_is_refused_with_stream(demo_bundle, pages, tmp_path):
    r = _run(demo_bundle, pages / "a.png", tmp_path / "o", "--batch", "2", "--stream")
    assert r.exit_code == 2 and "--batch > 1" in r.output


def test_default_batch_follows_kv_bytes_and_memory(demo_bundle):
    m = read_manifest(demo_bundle, verify_files=False)
    per = E.kv_bytes_per_slot(m)
    kv = m.kv
    assert per == 2 * kv.num_layers * kv.max_seq_len * kv.num_heads * kv.head_dim * 4
    assert E.default_batch(m, available=int(3 * per / E.KV_MEMORY_SHARE)) == 3
    assert E.default_batch(m, available=per) == 1
    assert E.default_batch(m, available=10**15) == E.MAX_DEFAULT_BATCH
    assert E.default_batch(m, max_seq_len=kv.max_seq_len // 2, available=int(3 * per / E.KV_MEMORY_SHARE)) == 6
    out = CliRunner().invoke(main, ["info", "--model", str(demo_bundle), "--no-verify"])
    assert out.exit_code == 0 and "kv bytes per slot" in out.output and "default --batch" in out.output


class Spy:
    def __init__(self, backend):
        self.calls = []
        for name in ("vision", "embed", "decode"):
            setattr(self, name, self._wrap(name, getattr(backend, name)))

    def _wrap(self, name, fn):
        def call(*a, **k):
            self.calls.append(name)
            return fn(*a, **k)
        return call


def test_a_prompt_longer_than_the_cache_is_refused_before_vision_and_embedding(demo_bundle, sample_page, monkeypatch):
    pipe = Pipeline(demo_bundle)
    spy = Spy(pipe.backend)
    for name in ("vision", "embed", "decode"):
        monkeypatch.setattr(pipe.backend, name, getattr(spy, name))
    opts = RunOptions(prompt=LONG_PROMPT, generation=GenerationOptions(max_new_tokens=4))
    with pytest.raises(CacheOverflowError, match="KV cache holds 1024"):
        pipe.generate(sample_page, opts)
    with pytest.raises(CacheOverflowError):
        pipe.ocr(sample_page, opts)
    engine = E.BatchEngine(pipe, max_batch=2)
    bad, good = engine.submit(sample_page, opts), engine.submit(sample_page, RunOptions(
        generation=GenerationOptions(max_new_tokens=4)))
    engine.run_until_idle()
    with pytest.raises(CacheOverflowError):
        bad.result()
    assert spy.calls.count("vision") == 1  # only the good page's view
    assert good.result()[1].ids


def test_the_runner_checks_room_before_building_the_mask(demo_bundle, monkeypatch):
    from dsocr.runtime.backends.ort import OrtBackend
    from dsocr.runtime import runner as R

    m = read_manifest(demo_bundle, verify_files=False)
    run = BundleRunner(OrtBackend(demo_bundle, m), max_seq_len=64)
    monkeypatch.setattr(R, "slot_mask", lambda *a: pytest.fail("mask built before the size check"))
    with pytest.raises(CacheOverflowError, match="65 positions needed"):
        run.prefill(np.zeros((65, m.hidden_size), np.float32))


def test_cli_records_a_too_long_prompt_in_errors_jsonl(demo_bundle, pages, tmp_path):
    r = _run(demo_bundle, pages / "a.png", tmp_path / "o", "--batch", "2", "--prompt", LONG_PROMPT)
    assert r.exit_code == 1
    (err,) = [json.loads(line) for line in (tmp_path / "o" / "errors.jsonl").read_text().splitlines()]
    assert err["error"] == "CacheOverflowError"


def test_ocr_many_equals_ocr_page_by_page(demo_bundle, sample_page):
    pipe = Pipeline(demo_bundle, batch=3)
    opts = RunOptions(generation=GenerationOptions(max_new_tokens=6))
    from PIL import Image

    rotated = Image.open(sample_page).convert("RGB").rotate(90, expand=True)
    got = pipe.ocr_many([sample_page, b"not an image", rotated], opts)
    assert isinstance(got[1], Exception)
    for src, res in ((sample_page, got[0]), (rotated, got[2])):
        alone = pipe.ocr(src, opts)
        assert res.markdown == alone.markdown


def test_bad_batch_values_are_refused(demo_bundle, pages, tmp_path):
    with pytest.raises(Exception, match="batch=0"):
        Pipeline(demo_bundle, batch=0)
    r = _run(demo_bundle, pages / "a.png", tmp_path / "o", "--batch", "0")
    assert r.exit_code == 2 and "--batch" in r.output
