"""The precision report: teacher-forced agreement per position, logits cosine, text edit distance."""
import json

import pytest
from click.testing import CliRunner

from dsocr.calibration.report import compare_bundles, format_report


@pytest.fixture(scope="module")
def page(calib_pages):
    return calib_pages[1]


def test_fp32_against_itself_agrees_fully(demo_bundle, page):
    r = compare_bundles(demo_bundle, demo_bundle, [page], max_new_tokens=4)
    (m,) = r.modes
    assert m.mode == "small" and m.positions == 4
    assert m.top1 == m.vision_top1 == 1.0 and m.cer == 0.0
    assert m.logits_cosine == pytest.approx(1.0, abs=1e-9) and m.vision_cosine == pytest.approx(1.0, abs=1e-9)
    assert "100.00%" in format_report(r)


def test_cli_compare_writes_json_and_enforces_min_top1(variants, demo_bundle, tmp_path):
    from dsocr.export.cli import main

    out = tmp_path / "report.json"
    args = ["compare", "--bundle", str(variants["int4-weight"]), "--against", str(demo_bundle), "--synthetic", "1",
            "--max-new-tokens", "4", "--json", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert d["precision"] == "int4-weight" and d["modes"][0]["positions"] == 4 and len(d["details"]) == 1
    m = d["modes"][0]
    assert 0 <= m["top1"] <= 1 and 0 <= m["vision_top1"] <= 1 and 0.9 < m["logits_cosine"] <= 1
    assert m["cer"] >= 0 and d["files_bytes"]["vision_640.onnx"] > 0
    # the gate needs a valid threshold (0..1) the measured agreement misses: int4 weights on the demo miss some ids
    assert m["top1"] < 1, f"int4-weight agrees fully ({m['top1']}): the gate cannot be shown to fire here"
    above = (m["top1"] + 1) / 2
    res = CliRunner().invoke(main, args + ["--min-top1", f"{above:.4f}"])
    assert res.exit_code == 2 and f"top-1 agreement below {above:.2%}" in res.output, res.output
    assert "Usage:" not in res.output and "Invalid value" not in res.output  # the gate, not a usage error
    res = CliRunner().invoke(main, args + ["--min-top1", f"{m['top1']:.4f}"])  # met exactly: passes
    assert res.exit_code == 0, res.output
