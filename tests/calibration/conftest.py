"""Shared, built once per session: the demo fp32 bundle (small mode) and its four precision variants
(sensitivity rule off to stay fast; the rule itself is covered by slow tests and unit tests)."""
from pathlib import Path

import pytest

from dsocr.calibration.pages import synthetic_pages


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    from dsocr.export.bundle import BuildOptions, build_bundle
    from dsocr.export.demo import write_demo_checkpoint

    root = tmp_path_factory.mktemp("demo")
    ckpt = write_demo_checkpoint(root / "ckpt")
    out = root / "bundles" / "small"
    build_bundle(ckpt, out, BuildOptions(modes=("small",), progress=False))
    return out


@pytest.fixture(scope="session")
def calib_pages():
    return synthetic_pages(2, seed=0)


@pytest.fixture(scope="session")
def calib_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("calib-cache")


@pytest.fixture(scope="session")
def variants(demo_bundle, calib_pages, calib_cache) -> dict[str, Path]:
    from dsocr.calibration.variants import PrecisionOptions, build_variants, variant_dir

    opts = PrecisionOptions(decoder_steps=2, sensitivity=False, probe_feeds=2, cache_dir=calib_cache, progress=False)
    precisions = ("fp16", "int8", "int8-weight", "int4-weight")
    build_variants(demo_bundle, precisions, calib_pages, opts, "2 synthetic pages")
    return {p: variant_dir(demo_bundle, p) for p in precisions}
