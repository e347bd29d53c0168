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
