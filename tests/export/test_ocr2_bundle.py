"""OCR-2 bundles: the built-in demo builds and runs offline; the manifest records the generation; OCR-1 and
OCR-2 modes, checkpoints and bundles refuse each other with a ModeError."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from dsocr.export.bundle import BuildOptions, build_bundle  # noqa: E402
from dsocr.export.demo import write_demo_checkpoint  # noqa: E402
from dsocr.runtime.errors import ModeError  # noqa: E402
from dsocr.runtime.manifest import read_manifest  # noqa: E402
from dsocr.runtime.pipeline import Pipeline, RunOptions  # noqa: E402


def test_manifest_records_generation_and_graphs(ocr2_demo_bundle):
    m = read_manifest(ocr2_demo_bundle)
    assert (m.generation, m.modes, m.source["model_type"]) == ("ocr2", ["ocr2"], "deepseek-ocr-2")
    assert m.graphs["vision_768"].inputs[0].shape == ["batch", 3, 768, 768]
    assert m.graphs["vision_768"].outputs[0].shape == ["batch", 144, 1280]
    assert m.graphs["vision_1024"].outputs[0].shape == ["batch", 256, 1280]
    lay = np.load(ocr2_demo_bundle / m.layout_file)
    assert lay.files == ["view_separator"]  # no image_newline in OCR-2


def test_v1_manifest_defaults_to_ocr1(demo_bundle):
    raw = json.loads((demo_bundle / "manifest.json").read_text())
    assert raw["generation"] == "ocr1"
    assert read_manifest(demo_bundle).generation == "ocr1"


def test_pipeline_on_a_tiled_page(ocr2_demo_bundle):
    from PIL import Image

    pipe = Pipeline(ocr2_demo_bundle)
    page = Image.new("RGB", (1500, 1000), (240, 240, 240))
    embeds, crop = pipe.image_embeddings(page, pipe.mode(None))
    assert crop == (3, 2) and embeds.shape == (6 * 144 + 256 + 1, 1280)
    sep = np.load(ocr2_demo_bundle / pipe.manifest.layout_file)["view_separator"]
    assert np.array_equal(embeds[-1], sep)
    text, result = pipe.generate(page, RunOptions(generation=pipe_options(4)))
    assert len(result.ids) == 4 and isinstance(text, str)


def pipe_options(n):
    from dsocr.runtime.decoding import GenerationOptions

    return GenerationOptions(max_new_tokens=n)


def test_bundles_refuse_the_other_generation(ocr2_demo_bundle, demo_bundle):
    with pytest.raises(ModeError, match="'small' is a DeepSeek-OCR mode.*OCR-2"):
        Pipeline(ocr2_demo_bundle).mode("small")
    with pytest.raises(ModeError, match="'ocr2' is a DeepSeek-OCR-2 mode"):
        Pipeline(demo_bundle).mode("ocr2")


def test_build_refuses_a_mode_of_the_other_generation(tmp_path):
    ckpt = write_demo_checkpoint(tmp_path / "ckpt", generation="ocr2")
    with pytest.raises(ModeError, match="'gundam' is a DeepSeek-OCR mode"):
        build_bundle(ckpt, tmp_path / "b", BuildOptions(modes=("gundam",), progress=False))
    assert not (tmp_path / "b").exists()


def test_build_cli_refuses_mixed_generations(tmp_path):
    from dsocr.export.cli import main

    result = CliRunner().invoke(main, ["build", "--mode", "small", "--mode", "ocr2", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "mix model generations" in result.output


@pytest.mark.slow
def test_build_then_run_offline(tmp_path, sample_page, monkeypatch):
    """`dsocr-export build --mode ocr2` then `dsocr run --model bundles/ocr2 PAGE` (the README's commands)."""
    from dsocr.export.cli import main as export_main
    from dsocr.runtime.cli import main as run_main

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(export_main, ["build", "--mode", "ocr2", "--quiet", "--no-engines", "--max-seq-len", "2048"])
    assert r.exit_code == 0, r.output
    assert "built-in demo checkpoint (DeepSeek-OCR-2;" in r.output and read_manifest("bundles/ocr2").generation == "ocr2"
    r = CliRunner().invoke(run_main, ["run", "--model", "bundles/ocr2", "--max-new-tokens", "32", str(sample_page), "-o", "out"])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "out" / "sample_page.md").read_text()
    assert md.strip()
    r = CliRunner().invoke(run_main, ["run", "--model", "bundles/ocr2", "--mode", "base", str(sample_page), "-o", "o2"])
    assert r.exit_code != 0 and "DeepSeek-OCR-2" in r.output


def test_verify_an_ocr2_bundle(ocr2_demo_bundle):
    from dsocr.export.verify import verify_bundle

    diffs = verify_bundle(ocr2_demo_bundle, steps=2)
    assert [d.mode for d in diffs] == ["ocr2"] * 3 and all(d.ok for d in diffs), diffs
