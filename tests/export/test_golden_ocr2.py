"""OCR-2 parity: the PyTorch model through the runtime's views, flat layout and decode loop reproduces the
official OCR-2 outputs (ocr2-tiny fixture: a tiled page and a small one); a perturbed copy fails."""
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from dsocr.export.cli import main  # noqa: E402
from dsocr.export.golden import OCR2_CASES, fixture_generation, run_golden  # noqa: E402
from dsocr.runtime.errors import ModeError  # noqa: E402

QUANTITIES = {"global_view", "images_spatial_crop", "image_embeds", "input_ids", "images_seq_mask",
              "prefill_last_logits", "step_logits", "greedy_ids"}


@pytest.fixture(scope="module")
def torch_rows(ocr2_fixture_dir):
    return run_golden(ocr2_fixture_dir, "torch")


def test_fixture_generation(ocr2_fixture_dir, fixture_dir):
    assert fixture_generation(ocr2_fixture_dir) == "ocr2" and fixture_generation(fixture_dir) == "ocr1"


@pytest.mark.parametrize("case", OCR2_CASES)
def test_torch_model_matches_ocr2_golden(torch_rows, case):
    rows = [r for r in torch_rows if r.mode == case]
    assert QUANTITIES <= {r.quantity for r in rows}
    if case == "tiles":
        assert "local_views" in {r.quantity for r in rows}
    bad = [(r.quantity, r.error) for r in rows if not r.ok]
    assert not bad, f"{case}: {bad}"


def _perturb(src, dst, key, scale):
    shutil.copytree(src, dst)
    gold = dict(np.load(dst / "golden.npz"))
    gold[key] = gold[key] + scale * np.abs(gold[key]).max()
    np.savez(dst / "golden.npz", **gold)
    return dst


def test_perturbed_ocr2_fixture_fails(ocr2_fixture_dir, tmp_path):
    fx = _perturb(ocr2_fixture_dir, tmp_path / "fx", "tiles.image_embeds", 1e-3)  # 10x the tolerance
    result = CliRunner().invoke(main, ["check-golden", "--fixture", str(fx)])
    assert result.exit_code == 2, result.output
    assert "FAIL" in result.output
    rows = run_golden(fx, "torch")
    assert [(r.mode, r.quantity) for r in rows if not r.ok] == [("tiles", "image_embeds")]


def test_check_golden_cli_passes_on_ocr2(ocr2_fixture_dir):
    result = CliRunner().invoke(main, ["check-golden", "--fixture", str(ocr2_fixture_dir), "--mode", "ocr2"])
    assert result.exit_code == 0, result.output
    assert "all 17 checks passed (torch)" in result.output


def test_generations_are_not_mixed(ocr2_fixture_dir, fixture_dir):
    with pytest.raises(ModeError, match="'small' is a DeepSeek-OCR mode"):
        run_golden(ocr2_fixture_dir, "torch", ("small",))
    result = CliRunner().invoke(main, ["check-golden", "--fixture", str(fixture_dir), "--mode", "ocr2"])
    assert result.exit_code == 1 and "DeepSeek-OCR-2 mode" in result.output
