"""Every graph of the demo bundle stays inside TensorRT 10.3 / 11.x ONNX parser support."""


from dsocr.engines.parser_support import check_bundle, errors  # noqa: E402


def test_demo_bundle_passes_parser_support(demo_bundle):
    results = check_bundle(demo_bundle)
    assert {"embed", "decoder"} <= set(results) and any(k.startswith("vision_") for k in results)
    assert {k: [str(i) for i in errors(v)] for k, v in results.items() if errors(v)} == {}


def test_check_command(demo_bundle):
    from click.testing import CliRunner

    from dsocr.engines.__main__ import main

    result = CliRunner().invoke(main, ["check", "--bundle", str(demo_bundle)])
    assert result.exit_code == 0, result.output
    assert "decoder: 0 error(s)" in result.output
    for name in ("check", "build"):
        assert CliRunner().invoke(main, [name, "--help"]).exit_code == 0


def test_ocr2_demo_bundle_passes_parser_support(ocr2_demo_bundle):
    results = check_bundle(ocr2_demo_bundle)
    assert {"embed", "decoder", "vision_768", "vision_1024"} <= set(results)
    assert {k: [str(i) for i in errors(v)] for k, v in results.items() if errors(v)} == {}
