"""Shared fixtures: the repository root, the vendored golden fixtures (never skipped) and a demo bundle."""
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


FIXTURES = REPO_ROOT / "tests" / "fixtures"  # vendored copies of ../shared/fixtures and ../shared/reference


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """tests/fixtures/tiny: golden outputs of the official v1 code (vendored; never skipped)."""
    path = FIXTURES / "tiny"
    assert (path / "golden.npz").is_file(), f"vendored golden fixture missing at {path}"
    return path


@pytest.fixture(scope="session")
def ocr2_fixture_dir() -> Path:
    """tests/fixtures/ocr2-tiny: golden outputs of the official OCR-2 code (vendored; never skipped)."""
    path = FIXTURES / "ocr2-tiny"
    assert (path / "golden.npz").is_file(), f"vendored golden fixture missing at {path}"
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """tests/fixtures/reference: the real checkpoints' configs and key indexes (v1; ocr2/ for OCR-2)."""
    return FIXTURES / "reference"


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    """A Small-mode fp32 bundle of the built-in demo checkpoint, built once per test session."""
    from dsocr.export.bundle import DEMO_SOURCE, BuildOptions, build_bundle
    from dsocr.export.demo import write_demo_checkpoint

    root = tmp_path_factory.mktemp("demo")
    ckpt = write_demo_checkpoint(root / "ckpt")
    out = root / "bundle"
    build_bundle(ckpt, out, BuildOptions(modes=("small",), max_seq_len=1024, progress=False), source=DEMO_SOURCE)
    return out


@pytest.fixture(scope="session")
def sample_page(repo_root) -> Path:
    return repo_root / "runtime" / "data" / "sample_page.png"


@pytest.fixture(scope="session")
def sample_pdf(repo_root) -> Path:
    return repo_root / "runtime" / "data" / "sample.pdf"


@pytest.fixture(scope="session")
def ocr2_demo_bundle(tmp_path_factory) -> Path:
    """An ocr2-mode fp32 bundle of the built-in OCR-2 demo checkpoint, built once per test session."""
    pytest.importorskip("torch")
    from dsocr.export.bundle import DEMO_SOURCE, BuildOptions, build_bundle
    from dsocr.export.demo import write_demo_checkpoint

    root = tmp_path_factory.mktemp("demo-ocr2")
    ckpt = write_demo_checkpoint(root / "ckpt", generation="ocr2")
    out = root / "bundle"
    build_bundle(ckpt, out, BuildOptions(modes=("ocr2",), max_seq_len=2048, progress=False), source=DEMO_SOURCE)
    return out
