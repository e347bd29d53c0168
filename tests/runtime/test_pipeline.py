"""The main job end to end on the demo bundle: image and PDF in, markdown + boxes out; bad input
gets a typed error and no half-written output."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from dsocr.runtime.cli import main
from dsocr.runtime.decoding import GenerationOptions
from dsocr.runtime.errors import CacheOverflowError, ImageError, ManifestError, ModeError
from dsocr.runtime.manifest import read_manifest
from dsocr.runtime.pipeline import Pipeline, RunOptions

FAST = RunOptions(generation=GenerationOptions(max_new_tokens=6))


@pytest.fixture(scope="module")
def pipe(demo_bundle):
    return Pipeline(demo_bundle)


def test_cli_runs_a_page_and_a_pdf(demo_bundle, sample_page, sample_pdf, tmp_path):
    out = tmp_path / "out"
    args = ["run", "--model", str(demo_bundle), str(sample_page), str(sample_pdf), "-o", str(out),
            "--max-new-tokens", "5", "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "3 page(s) done" in r.output
    names = sorted(p.name for p in out.iterdir())
    assert {"sample_page.md", "sample_page.json", "sample_p0000.md", "sample_p0001.md"} <= set(names)
    meta = json.loads((out / "sample_p0001.json").read_text())
    assert meta["page"] == 1 and meta["n_generated"] == 5 and meta["stop_reason"] == "max_tokens"
    assert not [n for n in names if n.endswith(".tmp")]
    r2 = CliRunner().invoke(main, args)  # resume: nothing redone
    assert r2.exit_code == 0 and "0 page(s) done, 3 already done" in r2.output


def test_streaming_text_equals_final_text(pipe, sample_page):
    pieces = []
    raw, result = pipe.generate(sample_page, FAST, on_text=pieces.append)
    assert len(result.ids) == 6
    assert "".join(pieces) == raw == pipe.tokenizer.decode(result.ids)


def test_runs_are_deterministic_and_independent(pipe, sample_page):
    a = pipe.generate(sample_page, FAST)[1].ids
    pipe.generate(sample_page, RunOptions(prompt="free", generation=GenerationOptions(max_new_tokens=3)))
    assert pipe.generate(sample_page, FAST)[1].ids == a  # the cache is reset between requests


def test_prompt_templates_and_locate(pipe):
    ids, mask = pipe.prompt_ids(RunOptions(prompt="locate", ref="the table"), 111)
    sp = pipe.tokenizer.special
    assert ids[0] == sp.bos and mask.sum() == 111 and ids[1] == sp.image
    assert sp.ref_open in ids and sp.ref_close in ids
    ids2, _ = pipe.prompt_ids(RunOptions(prompt="document"), 111)
    assert sp.grounding in ids2


def test_unknown_and_unbuilt_modes(pipe, demo_bundle, sample_page, tmp_path):
    with pytest.raises(ModeError, match="built for mode"):
        pipe.generate(sample_page, RunOptions(mode="base"))
    with pytest.raises(ModeError, match="unknown mode"):
        RunOptions(mode="huge")
    r = CliRunner().invoke(main, ["run", "--model", str(demo_bundle), str(sample_page), "-o", str(tmp_path / "o"),
                                  "--mode", "large"])
    assert r.exit_code == 1 and "rebuild it with" in r.output
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.md"))


def test_bad_images_are_typed_errors(pipe, tmp_path):
    with pytest.raises(ImageError):
        pipe.ocr(b"not an image", FAST)
    with pytest.raises(ImageError):
        pipe.ocr(tmp_path / "missing.png", FAST)


def test_prompt_longer_than_the_cache(demo_bundle, sample_page):
    small = Pipeline(demo_bundle, max_seq_len=64)  # the Small prompt alone needs ~123 positions
    with pytest.raises(CacheOverflowError, match="KV cache"):
        small.generate(sample_page, FAST)


def test_generation_stops_when_the_cache_is_full(demo_bundle, sample_page):
    pipe = Pipeline(demo_bundle, max_seq_len=130)
    _, result = pipe.generate(sample_page, RunOptions(generation=GenerationOptions(max_new_tokens=50)))
    assert result.stop_reason == "cache_full" and result.n_prompt + len(result.ids) <= 131


def test_corrupt_and_encrypted_pdfs_are_recorded_not_fatal(demo_bundle, sample_page, tmp_path):
    import pymupdf

    bad = tmp_path / "in" / "broken.pdf"
    bad.parent.mkdir()
    bad.write_bytes(b"%PDF-1.7\n garbage")
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "secret")
    doc.save(tmp_path / "in" / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o")
    shutil.copy(sample_page, tmp_path / "in" / "good.png")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["run", "--model", str(demo_bundle), str(tmp_path / "in"), "-o", str(out),
                                  "--max-new-tokens", "3", "--quiet"])
    assert r.exit_code == 1
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert {e["error"] for e in errors} == {"PDFError"} and len(errors) == 2
    assert any("encrypted" in e["message"] or "password" in e["message"] for e in errors)
    assert (out / "good.md").is_file() and not (out / "broken.md").exists()


def test_bundle_whose_files_do_not_match_the_manifest(demo_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(demo_bundle, copy)
    emb = copy / "embed.onnx"
    data = bytearray(emb.read_bytes())
    data[-10] ^= 0xFF
    emb.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="SHA-256"):
        Pipeline(copy)
    (copy / "embed.onnx").unlink()
    with pytest.raises(ManifestError, match="missing"):
        read_manifest(copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="format version 99"):
        read_manifest(copy)
    r = CliRunner().invoke(main, ["info", "--model", str(tmp_path)])
    assert r.exit_code == 1 and "not a dsocr bundle" in r.output


def test_info_lists_graphs(demo_bundle):
    r = CliRunner().invoke(main, ["info", "--model", str(demo_bundle)])
    assert r.exit_code == 0, r.output
    assert "decoder" in r.output and "files verified" in r.output


def test_kv_cache_is_written_in_place(pipe, sample_page):
    cache = pipe.runner.cache
    before = [id(k) for k in cache.key]
    pipe.generate(sample_page, FAST)
    assert [id(k) for k in cache.key] == before  # same buffers: allocated once
    assert cache.length > 0 and np.abs(cache.key[0][0, : cache.length]).sum() > 0


# -- generation defaults (the bundle's, from its manifest) ---------------------------------------------
def test_demo_bundle_defaults_serve_the_cli_and_it_says_the_text_is_meaningless(demo_bundle, sample_page, tmp_path):
    manifest = read_manifest(demo_bundle)
    assert manifest.generation_defaults == {"max_new_tokens": 256} and manifest.source["demo"] is True
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["run", "--model", str(demo_bundle), str(sample_page), "-o", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "sample_page.json").read_text())
    assert meta["n_generated"] <= 256 and meta["stop_reason"] in ("eos", "loop", "max_tokens")
    assert r.stderr.count("its text is meaningless") == 1


def bundle_with_defaults(demo_bundle, tmp_path, defaults):
    """A copy of the demo bundle (hard links: symlinks leaving a bundle are refused) with a manifest
    whose generation_defaults are `defaults`."""
    import os

    d = tmp_path / "b"
    d.mkdir()
    for f in demo_bundle.iterdir():
        if f.name != "manifest.json":
            os.link(f, d / f.name)
    raw = json.loads((demo_bundle / "manifest.json").read_text())
    raw["generation_defaults"] = defaults
    if defaults is None:
        del raw["generation_defaults"]
    (d / "manifest.json").write_text(json.dumps(raw))
    return d


def test_pipeline_uses_the_bundles_defaults_unless_options_are_given(demo_bundle, sample_page, tmp_path):
    pipe = Pipeline(bundle_with_defaults(demo_bundle, tmp_path, {"max_new_tokens": 9, "loop_detection": False}))
    _, result = pipe.generate(_page(sample_page))
    assert len(result.ids) <= 9 and (result.stop_reason == "max_tokens") == (len(result.ids) == 9)
    _, result = pipe.generate(_page(sample_page), RunOptions(generation=GenerationOptions(max_new_tokens=4)))
    assert len(result.ids) <= 4
    gen = pipe.generation_options(max_new_tokens=None, ngram_size=3)
    assert (gen.max_new_tokens, gen.ngram_size, gen.loop_detection) == (9, 3, False)


def test_bad_generation_defaults_are_a_manifest_error(demo_bundle, tmp_path):
    with pytest.raises(ManifestError, match="max_tokens"):
        Pipeline(bundle_with_defaults(demo_bundle, tmp_path, {"max_tokens": 9}))


def test_a_manifest_without_defaults_gets_the_official_ones(demo_bundle, tmp_path):
    pipe = Pipeline(bundle_with_defaults(demo_bundle, tmp_path, None))
    assert pipe.generation_options().max_new_tokens == 8192 and pipe.is_demo


def _page(path):
    from dsocr.runtime.preprocess import load_image

    return load_image(path)


# -- composition and explicit prompt ids ---------------------------------------------------------------
def test_compose_with_explicit_prompt_ids_builds_the_same_prompt(pipe, sample_page):
    page = _page(sample_page)
    composed = Pipeline.compose(pipe.backend, pipe.tokenizer, pipe.layout, max_seq_len=256)
    doc = pipe.manifest.prompts["document"]
    a = pipe.prepare(page, RunOptions())
    b = composed.prepare(page, RunOptions(prompt_ids=(doc["before"], doc["after"])))
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.images_seq_mask, b.images_seq_mask)
    np.testing.assert_allclose(a.embeds, b.embeds, rtol=0, atol=0)
    n = len(a.image_embeds)
    c = composed.prepare(page, RunOptions(prompt_ids=([5, 6], [7])))
    sp = pipe.tokenizer.special
    assert c.input_ids.tolist() == [sp.bos, 5, 6] + [sp.image] * n + [7]
    np.testing.assert_allclose(composed.prompt_embeds(c.image_embeds, RunOptions(prompt_ids=([5, 6], [7]))), c.embeds)
    assert composed.runner.cache.max_seq_len == 256


@pytest.mark.parametrize("kwargs,needle", [
    (dict(max_tiles=10), "max_tiles=10"), (dict(max_tiles=1), "max_tiles=1"), (dict(max_tiles=True), "max_tiles=True"),
    (dict(max_tiles=2.5), "max_tiles=2.5"), (dict(prompt_ids=[1, 2, 3]), "prompt_ids"),
    (dict(prompt_ids=([1], [-2])), "negative"), (dict(generation={"max_new_tokens": 3}), "generation="),
])
def test_run_options_reject_bad_values_by_name(kwargs, needle):
    from dsocr.runtime.errors import InputError

    with pytest.raises(InputError, match=needle):
        RunOptions(**kwargs)


def test_cli_looped_drop_and_layouts_on_a_pdf(demo_bundle, sample_pdf, tmp_path):
    """The demo model loops on every page: kept, the document has both pages; dropped, none."""
    keep, drop = tmp_path / "keep", tmp_path / "drop"
    base = ["run", "--model", str(demo_bundle), str(sample_pdf), "--quiet", "--layouts"]
    r = CliRunner().invoke(main, base + ["-o", str(keep)])
    assert r.exit_code == 0, r.output
    assert "2 page(s) stopped by the loop guard (kept)" in r.stderr and "1 document(s) written" in r.output
    assert (keep / "sample.md").read_text().count("<--- Page Split --->") == 2
    assert sorted(p.name for p in (keep / "layouts").iterdir()) == ["sample_p0000.jpg", "sample_p0001.jpg"]
    assert json.loads((keep / "sample_p0000.json").read_text())["looped"] is True
    r = CliRunner().invoke(main, base + ["-o", str(drop), "--looped", "drop"])
    assert r.exit_code == 0, r.output
    assert (drop / "sample.md").read_text() == "" and (drop / "sample_p0000.md").read_text() == ""
    assert json.loads((drop / "sample_p0001.json").read_text())["dropped"] is True
    assert not (drop / "layouts").exists()


def test_c_bridge_uses_the_bundles_default_when_max_new_tokens_is_0(demo_bundle, sample_page, tmp_path):
    from dsocr.runtime.capi.bridge import Model, Session

    bundle = bundle_with_defaults(demo_bundle, tmp_path, {"max_new_tokens": 5, "loop_detection": False})
    session = Session(Model(str(bundle)))
    png = sample_page.read_bytes()
    assert session.run_encoded(png, max_new_tokens=0).n_generated == 5  # 0: the bundle's default (no loop guard)
    assert session.run_encoded(png, max_new_tokens=3).n_generated == 3


def test_max_tiles_has_one_bound_in_options_and_preprocessing():
    from PIL import Image

    from dsocr.runtime.errors import InputError
    from dsocr.runtime.modes import MAX_TILES
    from dsocr.runtime.preprocess import preprocess

    page = Image.new("RGB", (2000, 2000))
    assert preprocess(page, "gundam", max_tiles=MAX_TILES).n_tiles <= MAX_TILES
    RunOptions(max_tiles=MAX_TILES)
    for bad in (MAX_TILES + 1, 64):
        with pytest.raises(InputError, match="max_tiles"):
            preprocess(page, "gundam", max_tiles=bad)
        with pytest.raises(InputError, match="max_tiles"):
            RunOptions(max_tiles=bad)
