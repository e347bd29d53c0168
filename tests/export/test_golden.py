"""dsocr reproduces the official outputs (golden fixtures) with its own preprocessing, model and loop."""
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from dsocr.export.cli import main
from dsocr.export.golden import run_golden
from dsocr.runtime.modes import mode_names

V1_MODES = mode_names("ocr1")  # the tiny fixture is OCR-1


@pytest.fixture(scope="module")
def torch_rows(fixture_dir):
    return run_golden(fixture_dir, "torch", V1_MODES)


@pytest.mark.parametrize("mode", V1_MODES)
def test_torch_model_matches_golden(torch_rows, mode):
    rows = [r for r in torch_rows if r.mode == mode]
    names = {r.quantity for r in rows}
    assert {"global_view", "image_embeds", "input_ids", "prefill_last_logits", "step_logits", "greedy_ids"} <= names
    bad = [(r.quantity, r.error) for r in rows if not r.ok]
    assert not bad, f"{mode}: {bad}"


@pytest.fixture()
def perturbed_fixture(fixture_dir, tmp_path):
    d = tmp_path / "fx"
    shutil.copytree(fixture_dir, d)
    gold = dict(np.load(d / "golden.npz"))
    ref = gold["small.image_embeds"]
    gold["small.image_embeds"] = ref + 1e-3 * np.abs(ref).max()  # 10x the tolerance
    np.savez(d / "golden.npz", **gold)
    return d


def test_check_golden_fails_on_a_perturbed_fixture(perturbed_fixture):
    result = CliRunner().invoke(main, ["check-golden", "--fixture", str(perturbed_fixture), "--mode", "small"])
    assert result.exit_code == 2, result.output
    assert "FAIL" in result.output and "Usage:" not in result.output  # the check's exit 2, not click's
    rows = run_golden(perturbed_fixture, "torch", ("small",))
    assert [r.quantity for r in rows if not r.ok] == ["image_embeds"]


def test_check_golden_rejects_a_directory_that_is_not_a_fixture(tmp_path):
    result = CliRunner().invoke(main, ["check-golden", "--fixture", str(tmp_path)])
    assert result.exit_code == 1
    assert "not a golden fixture" in result.output
