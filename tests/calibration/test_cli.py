"""The CLI surface: build --precision and compare, light --help, choices built from the registry."""
from click.testing import CliRunner

from dsocr.calibration.variants import PRECISIONS
from dsocr.export.cli import PRECISION_CHOICES, main


def test_precision_choices_match_the_registry():
    assert PRECISION_CHOICES == tuple(PRECISIONS)


def test_help_names_the_new_options():
    r = CliRunner().invoke(main, ["build", "--help"])
    assert r.exit_code == 0 and "--precision" in r.output and "--calib" in r.output
    r = CliRunner().invoke(main, ["compare", "--help"])
    assert r.exit_code == 0 and "--against" in r.output and "--json" in r.output


def test_build_variant_reuses_the_fp32_bundle(demo_bundle, tmp_path, calib_cache):
    import shutil

    fp32 = tmp_path / "small"
    shutil.copytree(demo_bundle, fp32)
    r = CliRunner().invoke(main, ["build", "--mode", "small", "--out", str(fp32), "--precision", "int8-weight",
                                  "--calib-pages", "1", "--calib-cache", str(calib_cache), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "using the existing fp32 bundle" in r.output and (tmp_path / "small-int8-weight" / "manifest.json").is_file()
    r = CliRunner().invoke(main, ["build", "--mode", "base", "--out", str(fp32), "--precision", "int8-weight"])
    assert r.exit_code == 1 and "--force" in r.output
