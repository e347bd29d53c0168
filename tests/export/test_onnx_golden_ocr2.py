"""The exported OCR-2 graphs (vision_768 with a dynamic tile batch, vision_1024, embed, decoder), run by the
runtime, reproduce the OCR-2 golden fixture with the PyTorch model's tolerances."""
import pytest

pytest.importorskip("onnx")

from dsocr.export.golden import OCR2_CASES, run_golden  # noqa: E402


@pytest.fixture(scope="module")
def onnx_rows(ocr2_fixture_dir):
    return run_golden(ocr2_fixture_dir, "onnx")


@pytest.mark.parametrize("case", OCR2_CASES)
def test_onnx_graphs_match_ocr2_golden(onnx_rows, case):
    rows = [r for r in onnx_rows if r.mode == case]
    assert len(rows) >= 8
    bad = [(r.quantity, r.error) for r in rows if not r.ok]
    assert not bad, f"{case}: {bad}"
    assert next(r for r in rows if r.quantity == "greedy_ids").error == 0
