"""engines.json checks and the TensorRT-version seams of the builder, on CPU (no tensorrt import)."""
import json
import sys
import types

import pytest

from dsocr.engines import build as B
from dsocr.runtime.backends import trt as T
from dsocr.runtime.errors import BackendUnavailableError, EngineMismatchError, ManifestError


def record(version="10.3.0.30", name="Orin (nvgpu)", cc="8.7"):
    return {"format": T.ENGINES_FORMAT, "format_version": T.ENGINES_FORMAT_VERSION, "tensorrt_version": version,
            "gpu": {"name": name, "compute_capability": cc}, "past_pad": T.PAST_PAD, "plans": {}}


def test_matching_engines_pass(tmp_path):
    assert T.check_engine_manifest(record(), "10.3.0.30", "Orin (nvgpu)", "8.7")["tensorrt_version"] == "10.3.0.30"
    path = tmp_path / T.ENGINES_NAME
    path.write_text(json.dumps(record()))
    assert T.check_engine_manifest(path, "10.3.0.30", "orin  (NVGPU)", "8.7")  # names compare loosely


def test_tensorrt_version_mismatch():
    with pytest.raises(EngineMismatchError) as e:
        T.check_engine_manifest(record(), "11.1.0.5", "Orin (nvgpu)", "8.7")
    msg = str(e.value)
    assert "built with TensorRT 10.3.0.30 for GPU Orin (nvgpu) (sm_87)" in msg
    assert "this machine has TensorRT 11.1.0.5 / GPU Orin (nvgpu) (sm_87)" in msg
    assert "rebuild with dsocr-export build" in msg


def test_gpu_mismatch():
    with pytest.raises(EngineMismatchError, match=r"sm_87.*NVIDIA H200 \(sm_90\)"):
        T.check_engine_manifest(record(), "10.3.0.30", "NVIDIA H200", "9.0")
    same_sm = record(name="NVIDIA GeForce RTX 4090", cc="8.9")
    with pytest.raises(EngineMismatchError, match="NVIDIA L40S"):
        T.check_engine_manifest(same_sm, "10.3.0.30", "NVIDIA L40S", "8.9")
    assert T.check_engine_manifest(same_sm, "10.3.0.30", None, "8.9")  # unknown name: capability decides
    assert issubclass(EngineMismatchError, ManifestError)


def test_not_an_engine_manifest(tmp_path):
    with pytest.raises(ManifestError, match="dsocr-engines"):
        T.check_engine_manifest({"format": "other"}, "10.3.0", "x", "8.7")
    with pytest.raises(ManifestError, match="not readable"):
        T.check_engine_manifest(tmp_path / "missing.json", "10.3.0", "x", "8.7")
    broken = record()
    del broken["gpu"]
    with pytest.raises(ManifestError, match="lacks the required field 'gpu'"):
        T.check_engine_manifest(broken, "10.3.0", "x", "8.7")


def fake_trt(version, flags=None, monitor=False):
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    if flags is not None:
        mod.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
    if monitor:
        class IProgressMonitor:
            def __init__(self):
                self.base_init = True
        mod.IProgressMonitor = IProgressMonitor
    return mod


def test_network_flags_per_version():
    assert B.network_flags(fake_trt("10.3.0.30", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})) == 1 << 1
    assert B.network_flags(fake_trt("11.1.0", {"STRONGLY_TYPED": 0})) == 0  # always strongly typed, flag ignored
    assert B.network_flags(fake_trt("11.4.0")) == 0  # flag gone entirely: no crash
    with pytest.raises(BackendUnavailableError, match="strongly typed"):
        B.network_flags(fake_trt("8.6.1", {"EXPLICIT_BATCH": 0}))


def test_progress_monitor_optional():
    assert B._progress_monitor(fake_trt("8.6.1")) is None
    mon = B._progress_monitor(fake_trt("10.3.0", monitor=True))
    assert mon.base_init
    mon.phase_start("Building", None, 3)
    mon.phase_start("Tactics", "Building", 2)
    assert mon.step_complete("Tactics", 0) is True and mon.step_complete("unknown", 0) is True
    mon.phase_finish("Tactics")
    mon.phase_finish("Building")
    mon.phase_finish("never started")


def test_missing_tensorrt_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'dsocr\[trt\]'"):
        B.build_engine(tmp_path / "g.onnx", tmp_path / "g.plan", [])
    from dsocr.runtime.manifest import KVSpec, Manifest

    manifest = Manifest(modes=["small"], precision="fp32", graphs={}, kv=KVSpec(1, 1, 64, "float32", 16),
                        hidden_size=64, vocab_size=8, rope_theta=1e4, special_tokens={}, prompts={},
                        tokenizer="t", layout_file="l")
    with pytest.raises(BackendUnavailableError, match=r"dsocr\[trt\]"):
        T.TrtBackend(tmp_path, manifest)


def test_gpu_info_without_gpu_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setattr(T, "_import_cuda", lambda: (_ for _ in ()).throw(BackendUnavailableError("none")))

    def no_nvidia_smi(*args, **kwargs):  # whether or not this machine has one
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(T.subprocess, "run", no_nvidia_smi)
    with pytest.raises(BackendUnavailableError, match="cuda-python or make nvidia-smi"):
        T.gpu_info()


def test_gpu_info_parses_nvidia_smi(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setattr(T, "_import_cuda", lambda: (_ for _ in ()).throw(BackendUnavailableError("none")))
    out = types.SimpleNamespace(stdout="NVIDIA H200, 9.0\n")
    monkeypatch.setattr(T.subprocess, "run", lambda *a, **k: out)
    assert T.gpu_info() == ("NVIDIA H200", "9.0")


def test_engines_cli_help_is_light():
    """`python -m dsocr.engines ... --help` imports neither torch nor tensorrt (the Jetson image has no torch)."""
    import subprocess

    code = ("import sys\nfrom click.testing import CliRunner\nfrom dsocr.engines.__main__ import main\n"
            "for args in (['--help'], ['check', '--help'], ['build', '--help']):\n"
            "    r = CliRunner().invoke(main, args)\n    assert r.exit_code == 0, r.output\n"
            "import dsocr.engines.build, dsocr.engines.profiles, dsocr.runtime.backends.trt\n"
            "print('torch' in sys.modules, 'tensorrt' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False False"
