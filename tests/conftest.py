"""Shared fixtures: the repository root and the golden fixture directory (skipped when absent)."""
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def fixture_dir(repo_root) -> Path:
    """../shared/fixtures/tiny next to the repository (golden outputs of the official code)."""
    path = (repo_root / ".." / "shared" / "fixtures" / "tiny").resolve()
    if not (path / "golden.npz").is_file():
        pytest.skip(f"golden fixture not found at {path}")
    return path


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    """A Small-mode fp32 bundle of the built-in demo checkpoint, built once per test session."""
    pytest.importorskip("torch")
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
