"""A bundle is untrusted input (issue 10, items 1, 6, 8): every malformed or escaping manifest is one
ManifestError line naming the field, never a traceback, never a file outside the bundle."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dsocr.runtime.cli import main
from dsocr.runtime.errors import BundleError, ManifestError
from dsocr.runtime.manifest import MANIFEST_NAME, make_stage_dir, read_layout, read_manifest, replace_dir

D = 8  # hidden size of the hand-made bundle


def _entry(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _spec(role, file, size=None):
    return {"role": role, "file": file, "inputs": [{"name": "x", "dtype": "float32", "shape": [1, "T"]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [1, "T"]}], "size": size, "precision": "fp32"}


def write_bundle(root: Path, edit=None, files: dict | None = None) -> Path:
    """A small fake bundle (graph bytes are not ONNX: read_manifest only hashes them) -> root."""
    root.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.BytesIO()
    np.savez(buf, image_newline=np.zeros(D, np.float32), view_separator=np.ones(D, np.float32))
    blobs = {"vision_640.onnx": b"v" * 10, "embed.onnx": b"e" * 10, "decoder.onnx": b"d" * 10,
             "tokenizer.json": b"{}", "layout.npz": buf.getvalue(), **(files or {})}
    for name, data in blobs.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    m = {"format": "dsocr-bundle", "format_version": 1, "dsocr_version": "0.1.0", "modes": ["small"],
         "precision": "fp32",
         "graphs": {"vision_640": _spec("vision", "vision_640.onnx", 640), "embed": _spec("embed", "embed.onnx"),
                    "decoder": _spec("decoder", "decoder.onnx")},
         "kv": {"num_layers": 2, "num_heads": 2, "head_dim": 4, "dtype": "float32", "max_seq_len": 1024,
                "layout": "BSHD"},
         "hidden_size": D, "vocab_size": 100, "rope_theta": 10000.0, "special_tokens": {"bos": 0, "eos": 1},
         "prompts": {"ocr": {"text": "<image>\nFree OCR.", "before": [1], "after": [2]}},
         "tokenizer": "tokenizer.json", "layout_file": "layout.npz",
         "files": {n: _entry(d) for n, d in blobs.items()}, "source": {"checkpoint": "fake"}}
    if edit:
        edit(m)
    raw = m if isinstance(m, (bytes, str)) else json.dumps(m)
    (root / MANIFEST_NAME).write_text(raw) if isinstance(raw, str) else (root / MANIFEST_NAME).write_bytes(raw)
    return root


def refused(bundle: Path, match: str, verify=True) -> str:
    with pytest.raises(ManifestError, match=match) as e:
        read_manifest(bundle, verify_files=verify)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    return str(e.value)


def test_the_fake_bundle_itself_is_accepted(tmp_path):
    m = read_manifest(write_bundle(tmp_path / "b"))
    assert m.kv.max_seq_len == 1024 and set(m.graphs) == {"vision_640", "embed", "decoder"}
    assert BundleError is ManifestError


# -- item 1: names that leave the bundle ------------------------------------------------------
@pytest.mark.parametrize("name, why", [
    ("../../x/decoder.onnx", r"empty, '\.' or '\.\.' part"), ("/etc/shadow", "absolute path"),
    ("a\\b.onnx", "backslash"),
    ("a\x00b", "NUL"), ("./decoder.onnx", r"empty, '\.' or '\.\.' part"), ("", "non-empty|too short"),
])
def test_escaping_graph_file_names_are_refused(tmp_path, name, why):
    def edit(m):
        m["graphs"]["decoder"]["file"] = name
        m["files"][name] = {"sha256": "0" * 64, "bytes": 1}

    msg = refused(write_bundle(tmp_path / "b", edit), why, verify=False)
    assert "manifest." in msg


def test_absolute_tokenizer_and_listed_etc_file_are_refused_even_without_verify(tmp_path):
    def edit(m):
        m["tokenizer"] = "/etc/hostname"
        m["files"]["/etc/hostname"] = {"sha256": "0" * 64, "bytes": 1}

    refused(write_bundle(tmp_path / "b", edit), "manifest.tokenizer = \"/etc/hostname\" is an absolute|"
            "manifest.files.*absolute", verify=False)

    def listed(m):
        m["files"]["/etc/shadow"] = {"sha256": "0" * 64, "bytes": 1}

    bundle = write_bundle(tmp_path / "c", listed)
    refused(bundle, "absolute path", verify=False)
    r = CliRunner().invoke(main, ["info", "--model", str(bundle), "--no-verify"])
    assert r.exit_code == 1 and "absolute path" in r.output and "Traceback" not in r.output


def test_symlink_leaving_the_bundle_is_refused(tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"d" * 10)
    bundle = write_bundle(tmp_path / "b")
    (bundle / "decoder.onnx").unlink()
    (bundle / "decoder.onnx").symlink_to(outside)
    refused(bundle, "outside .* symlink", verify=False)
    inside = write_bundle(tmp_path / "c")  # a symlink that stays inside is fine
    (inside / "real").mkdir()
    (inside / "decoder.onnx").rename(inside / "real" / "decoder.onnx")
    (inside / "decoder.onnx").symlink_to(inside / "real" / "decoder.onnx")
    read_manifest(inside)


def test_unlisted_tokenizer_or_layout_is_refused(tmp_path):
    refused(write_bundle(tmp_path / "a", lambda m: m["files"].pop("layout.npz")),
            "manifest.layout_file = 'layout.npz' is not listed in manifest.files")
    refused(write_bundle(tmp_path / "b", lambda m: m["files"].pop("tokenizer.json")),
            "manifest.tokenizer = 'tokenizer.json' is not listed")


def _onnx_with_external(location: str) -> bytes:
    """Bytes shaped like a TensorProto external_data entry {key: "location", value: location}."""
    v = location.encode()
    entry = b"\x0a\x08location\x12" + bytes([len(v)]) + v
    return b"\x08\x01" + b"\x6a" + bytes([len(entry)]) + entry + b"\x00" * 16


def test_external_data_must_be_listed_and_inside(tmp_path):
    good = write_bundle(tmp_path / "a", files={"decoder.onnx": _onnx_with_external("decoder.onnx.data"),
                                                "decoder.onnx.data": b"w" * 64})
    read_manifest(good)
    unlisted = write_bundle(tmp_path / "b", lambda m: m["files"].pop("decoder.onnx.data"),
                            files={"decoder.onnx": _onnx_with_external("decoder.onnx.data"),
                                   "decoder.onnx.data": b"w" * 64})
    refused(unlisted, "reads external data 'decoder.onnx.data', which manifest.files does not list")
    escaping = write_bundle(tmp_path / "c", files={"decoder.onnx": _onnx_with_external("../../etc/passwd")})
    refused(escaping, r"graph decoder.onnx: external data of decoder.onnx .*'\.\.' part")


def test_external_data_name_across_a_read_chunk_is_found(tmp_path):
    from dsocr.runtime.manifest import _hash_file

    data = b"x" * 1000 + _onnx_with_external("w.bin") + b"y" * 50
    path = tmp_path / "g.onnx"
    path.write_bytes(data)
    for chunk in (7, 1003, 1010, 4096):  # the marker and the name split at every kind of boundary
        digest, names = _hash_file(path, scan=True, chunk=chunk)
        assert names == {"w.bin"} and digest == hashlib.sha256(data).hexdigest()


# -- item 6: malformed manifests ---------------------------------------------------------------
@pytest.mark.parametrize("edit, match", [
    (lambda m: m["kv"].update(max_seq_len=10**9), r"manifest\.kv\.max_seq_len = 1000000000 exceeds 1048576"),
    (lambda m: m["kv"].update(max_seq_len=1 << 20, num_layers=512, num_heads=1024, head_dim=1024),
     "GiB cache"),
    (lambda m: m["files"]["embed.onnx"].pop("sha256"),
     r"manifest\.files\.embed\.onnx lacks the required field 'sha256'"),
    (lambda m: m["files"]["embed.onnx"].update(sha256="zz"),
     r"manifest\.files\.embed\.onnx\.sha256 = \"zz\" is not valid"),
    (lambda m: m["graphs"].pop("decoder"), "lacks the decoder graph"),
    (lambda m: m.update(modes=[]), r"manifest\.modes is empty"),
    (lambda m: m.update(modes=["huge"]), r"manifest\.modes\[0\] = 'huge'"),
    (lambda m: m.update(modes=["base"]), "mode 'base' needs a vision graph for 1024x1024"),
    (lambda m: m["graphs"]["embed"].update(role="sampler"),
     r"manifest\.graphs\.embed\.role = \"sampler\" is not one of"),
    (lambda m: m.update(graphs=[]), r"manifest\.graphs = \[\] must be of type object"),
    (lambda m: m.update(hidden_size="big"), r"manifest\.hidden_size = \"big\" must be of type integer"),
    (lambda m: m.update(surprise=1), "unexpected field.*'surprise'"),
    (lambda m: m["special_tokens"].update(eos=5000), r"special_tokens\.eos = 5000 is not below vocab_size"),
    (lambda m: m.update(generation="ocr3"), r"manifest\.generation = \"ocr3\" is not one of ocr1, ocr2"),
    (lambda m: m.update(generation_defaults={"max_new_tokens": "lots"}), r"generation_defaults\.max_new_tokens"),
    (lambda m: m["kv"].update(layout="B" * 40), r"manifest\.kv\.layout"),
])
def test_malformed_manifest_is_one_line_naming_the_field(tmp_path, edit, match):
    refused(write_bundle(tmp_path / "b", edit), match)


def test_fields_others_add_are_admitted(tmp_path):
    def edit(m):
        m.update(generation="ocr2", generation_defaults={"max_new_tokens": 256, "greedy": True, "seed": None})
        m["kv"].update(layout="BHSD", max_batch=8)
        m["graphs"]["decoder_step"] = _spec("decoder_step", "decoder.onnx")

    m = read_manifest(write_bundle(tmp_path / "b", edit))
    assert m.graphs["decoder_step"].role == "decoder_step"


@pytest.mark.parametrize("raw, match", [
    ("[" * 100000 + "]" * 100000, "nested more than"),
    ('{"a":' * 30 + "1" + "}" * 30, "nested more than"),
    ("[1, 2]", "must be a JSON object"),
    ("null", "must be a JSON object"),
    (b'{"format": "dsocr-bundle\xff"}', "not UTF-8"),
    ('{"format": NaN}', "not valid JSON"),
    ("{", "not valid JSON"),
])
def test_non_object_deep_or_binary_manifests(tmp_path, raw, match):
    b = tmp_path / "b"
    b.mkdir()
    (b / MANIFEST_NAME).write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    refused(b, match)


def test_huge_manifest_is_refused_before_parsing(tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    (b / MANIFEST_NAME).write_bytes(b'{"x": "' + b"a" * (9 << 20) + b'"}')
    refused(b, "larger than")


def test_fifo_listed_in_the_bundle_is_refused_without_blocking(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    (bundle / "tokenizer.json").unlink()
    os.mkfifo(bundle / "tokenizer.json")
    refused(bundle, "tokenizer.json is not a regular file")


@pytest.mark.parametrize("content, match", [
    (None, "layout.npz named in the manifest is missing"),
    (b"PK\x03\x04 not a zip", "not a readable .npz"),
])
def test_missing_or_corrupt_layout(tmp_path, content, match):
    bundle = write_bundle(tmp_path / "b")
    if content is None:
        (bundle / "layout.npz").unlink()
        refused(bundle, match)
        return
    m = read_manifest(write_bundle(tmp_path / "c", files={"layout.npz": content}))
    with pytest.raises(ManifestError, match=match):
        read_layout(tmp_path / "c", m)


def test_layout_of_the_wrong_width_is_refused(tmp_path):
    import io

    buf = io.BytesIO()
    np.savez(buf, image_newline=np.zeros(3, np.float32), view_separator=np.zeros(D, np.float32))
    bundle = write_bundle(tmp_path / "b", files={"layout.npz": buf.getvalue()})
    with pytest.raises(ManifestError, match=r"image_newline has shape \(3,\).*expected \[8\]"):
        read_layout(bundle, read_manifest(bundle))


def test_swapped_graph_with_updated_hash_is_refused_at_load(demo_bundle, tmp_path):
    pytest.importorskip("onnxruntime")
    from dsocr.runtime.backends.ort import SessionCache

    bundle = tmp_path / "b"
    shutil.copytree(demo_bundle, bundle)
    m = json.loads((bundle / MANIFEST_NAME).read_text())
    shutil.copyfile(bundle / "vision_640.onnx", bundle / "embed.onnx")  # same file name, another graph
    m["files"]["embed.onnx"] = _entry((bundle / "embed.onnx").read_bytes())
    (bundle / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="graph embed .*does not match the manifest's inputs"):
        SessionCache(bundle, read_manifest(bundle)).load_all()


def test_cli_info_reports_a_malformed_bundle_in_one_line(tmp_path):
    bundle = write_bundle(tmp_path / "b", lambda m: m["kv"].update(max_seq_len=10**9))
    r = CliRunner().invoke(main, ["info", "--model", str(bundle)])
    assert r.exit_code == 1 and "manifest.kv.max_seq_len = 1000000000 exceeds 1048576" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


# -- item 8: permissions of what we create -------------------------------------------------------
def test_stage_dirs_and_bundles_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        stage = make_stage_dir(tmp_path, ".x.partial-")
        assert stage.stat().st_mode & 0o777 == 0o755
        (stage / "f").write_text("x")
        replace_dir(stage, tmp_path / "bundle")
        assert (tmp_path / "bundle").stat().st_mode & 0o777 == 0o755
        os.umask(0o077)
        assert make_stage_dir(tmp_path, ".y-").stat().st_mode & 0o777 == 0o700
    finally:
        os.umask(old)


# -- engines.json: one typed schema for writer and reader -------------------------------------------
def _engines(**plan):
    entry = {"file": "decoder.plan", "sha256": "a" * 64, "bytes": 3,
             "onnx": {"file": "decoder.onnx", "sha256": "b" * 64}, "profiles": [{"x": [[1], [2], [3]]}], **plan}
    return {"format": "dsocr-engines", "format_version": 1, "tensorrt_version": "10.3", "past_pad": 1,
            "gpu": {"name": "g", "compute_capability": "8.7"}, "plans": {"decoder": entry}}


def test_engines_record_round_trips_and_resolves_plans_inside(tmp_path):
    from dsocr.runtime.engines_file import EnginesRecord, read_engines, write_engines

    rec = EnginesRecord.from_dict(_engines())
    write_engines(tmp_path, rec)
    again = read_engines(tmp_path / "engines.json")
    assert again == rec and again.plan_path(tmp_path, "decoder") == (tmp_path / "decoder.plan").resolve()
    (tmp_path / "decoder.plan").symlink_to("/etc/hostname")
    with pytest.raises(ManifestError, match="outside"):
        again.plan_path(tmp_path, "decoder")


@pytest.mark.parametrize("plan, match", [
    ({"file": "/etc/x.plan"}, r"engines\.plans\.decoder\.file .*absolute"),
    ({"file": "../x.plan"}, r"'\.\.' part"),
    ({"bytes": -1}, r"engines\.plans\.decoder\.bytes = -1 is below 0"),
    ({"profiles": []}, r"engines\.plans\.decoder\.profiles is empty"),
    ({"sha256": "x"}, r"engines\.plans\.decoder\.sha256"),
])
def test_engines_record_refuses_bad_plans(plan, match):
    from dsocr.runtime.engines_file import EnginesRecord

    with pytest.raises(ManifestError, match=match):
        EnginesRecord.from_dict(_engines(**plan))


def test_a_built_bundle_follows_the_umask(demo_bundle):
    from dsocr.runtime.manifest import current_umask

    want = 0o777 & ~current_umask()  # the fixture was built by this process, under this umask
    assert demo_bundle.stat().st_mode & 0o777 == want
    assert (demo_bundle / MANIFEST_NAME).stat().st_mode & 0o777 == want & 0o666
