"""Bundle building: the contract (manifest) is complete and honest; builds are atomic; verify works."""
import json

import onnx
import pytest
from click.testing import CliRunner

from dsocr.export.bundle import BuildOptions, build_bundle
from dsocr.export.cli import main
from dsocr.runtime.errors import CheckpointError, InputError, ModeError
from dsocr.runtime.manifest import read_manifest, sha256_file


def test_manifest_names_and_hashes_every_file(demo_bundle):
    m = read_manifest(demo_bundle)
    on_disk = {p.name for p in demo_bundle.iterdir()} - {"manifest.json"}
    assert set(m.files) == on_disk
    for name, entry in m.files.items():
        assert entry["sha256"] == sha256_file(demo_bundle / name)
    assert m.modes == ["small"] and m.precision == "fp32"
    assert {g.role for g in m.graphs.values()} == {"vision", "embed", "decoder"}
    assert m.special_tokens["image"] == 1023 and m.special_tokens["eos"] == 1
    assert m.prompts["document"]["before"] == [] and m.prompts["document"]["after"]
    assert m.kv.layout == "BSHD" and m.kv.max_seq_len == 1024


def test_graph_io_matches_the_manifest(demo_bundle):
    m = read_manifest(demo_bundle)
    for spec in m.graphs.values():
        g = onnx.load(str(demo_bundle / spec.file), load_external_data=False).graph
        assert [i.name for i in g.input] == [t.name for t in spec.inputs]
        assert [o.name for o in g.output] == [t.name for t in spec.outputs]
        assert {x.name for x in g.initializer} >= {"model.norm.weight"} or spec.role != "decoder"


def test_weights_keep_checkpoint_names(demo_bundle):
    g = onnx.load(str(demo_bundle / "decoder.onnx"), load_external_data=False).graph
    names = {x.name for x in g.initializer}
    assert "model.layers.1.mlp.experts.0.gate_proj.weight__T" in names
    assert "lm_head.weight__T" in names


def test_build_errors_leave_nothing_behind(tmp_path):
    with pytest.raises(ModeError):
        BuildOptions(modes=("huge",))
    with pytest.raises(CheckpointError):
        build_bundle(tmp_path / "nope", tmp_path / "out", BuildOptions(progress=False))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_existing_bundle_is_not_replaced_without_force(demo_bundle):
    with pytest.raises(InputError, match="exists"):
        build_bundle(demo_bundle, demo_bundle, BuildOptions(progress=False))


def test_verify_command_compares_with_pytorch(demo_bundle):
    r = CliRunner().invoke(main, ["verify", "--bundle", str(demo_bundle), "--steps", "3"])
    assert r.exit_code == 0, r.output
    assert r.output.count("ok") == 3 and "FAIL" not in r.output


def test_build_command_with_demo_and_bad_mode(tmp_path, monkeypatch):
    import dsocr.export.cli as cli

    monkeypatch.setattr(cli, "_tensorrt_available", lambda: False)  # whatever this machine has installed
    r = CliRunner().invoke(main, ["build", "--mode", "tiny", "--out", str(tmp_path / "b"), "--quiet",
                                  "--max-seq-len", "256"])
    assert r.exit_code == 0, r.output
    assert "built-in demo" in r.output and "TensorRT is not installed" in r.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["modes"] == ["tiny"]
    r = CliRunner().invoke(main, ["build", "--mode", "huge"])
    assert r.exit_code == 2 and "huge" in r.output


def test_build_command_builds_engines_where_tensorrt_is_installed(tmp_path, monkeypatch):
    import dsocr.engines.build
    import dsocr.export.cli as cli

    built = []
    monkeypatch.setattr(cli, "_tensorrt_available", lambda: True)
    monkeypatch.setattr(dsocr.engines.build, "build_engines", lambda out: built.append(out) or {"plans": {"x": {}}})
    args = ["build", "--mode", "tiny", "--out", str(tmp_path / "b"), "--quiet", "--max-seq-len", "256"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert built == [tmp_path / "b"] and "built TensorRT engines into" in r.output
    assert "TensorRT is not installed" not in r.output
