"""calibration sits on the runtime only: importing it loads neither torch nor dsocr.export/engines."""
import subprocess
import sys

MODULES = ["pages", "feeds", "stats", "groups", "qdq", "precision", "sensitivity", "variants", "report"]


def test_calibration_imports_neither_torch_nor_export():
    code = "import sys\n" + "".join(f"import dsocr.calibration.{m}\n" for m in MODULES) + (
        "print(','.join(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'dsocr.export', "
        "'dsocr.engines', 'tensorrt')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
