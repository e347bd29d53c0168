"""The exported graphs, run by the runtime (ONNX Runtime, KV cache, decode loop), reproduce the
golden fixtures in every mode with the same tolerances as the PyTorch model."""
import pytest

from dsocr.export.golden import run_golden
from dsocr.runtime.modes import mode_names

V1_MODES = mode_names("ocr1")  # the tiny fixture is OCR-1


@pytest.fixture(scope="module")
def onnx_rows(fixture_dir):
    return run_golden(fixture_dir, "onnx", V1_MODES)


@pytest.mark.parametrize("mode", V1_MODES)
def test_onnx_graphs_match_golden(onnx_rows, mode):
    rows = [r for r in onnx_rows if r.mode == mode]
    assert len(rows) >= 8
    bad = [(r.quantity, r.error) for r in rows if not r.ok]
    assert not bad, f"{mode}: {bad}"
    assert next(r for r in rows if r.quantity == "greedy_ids").error == 0
