"""The demo bundle the engine tests check and run: built once per session (small mode, short cache).

DSOCR_TEST_BUNDLE=<dir> uses an existing bundle instead (e.g. one made from the real checkpoint).
"""
import os
from pathlib import Path

import pytest

MAX_SEQ_LEN = 256  # room for a small-mode page prompt (111 image tokens + text) and a few steps


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    given = os.environ.get("DSOCR_TEST_BUNDLE")
    if given:
        return Path(given)
    from dsocr.export.bundle import BuildOptions, build_bundle
    from dsocr.export.demo import write_demo_checkpoint

    root = tmp_path_factory.mktemp("engines-bundle")
    ckpt = write_demo_checkpoint(root / "demo-checkpoint")
    out = root / "bundle"
    build_bundle(ckpt, out, BuildOptions(modes=("small",), max_seq_len=MAX_SEQ_LEN, progress=False), source="demo")
    return out
