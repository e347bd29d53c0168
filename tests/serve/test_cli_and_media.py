"""`dsocr serve` / `dsocr ray-run` --help stay light; the packages are in pyproject; image URL rules."""
from __future__ import annotations

import base64
import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

HEAVY = ("fastapi", "uvicorn", "starlette", "pydantic", "prometheus_client", "ray", "pyarrow", "onnxruntime", "torch")


@pytest.mark.parametrize("command", ["serve", "ray-run"])
def test_help_imports_nothing_heavy(command):
    code = ("import sys\nfrom click.testing import CliRunner\nfrom dsocr.runtime.cli import main\n"
            f"r = CliRunner().invoke(main, [{command!r}, '--help'])\nassert r.exit_code == 0, r.output\n"
            "assert '--model' in r.output\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_serve_and_ray_packages_are_mapped(repo_root):
    cfg = tomllib.loads((repo_root / "pyproject.toml").read_text())
    tool = cfg["tool"]["setuptools"]
    assert tool["package-dir"]["dsocr.serve"] == "serve" and tool["package-dir"]["dsocr.ray"] == "raydata"
    for pkg, folder in (("dsocr.serve", "serve"), ("dsocr.ray", "raydata")):
        subpackages = {pkg + "." + ".".join(p.parent.relative_to(repo_root / folder).parts)
                       for p in (repo_root / folder).rglob("__init__.py") if p.parent != repo_root / folder}
        assert {pkg, *subpackages} <= set(tool["packages"])
    extras = cfg["project"]["optional-dependencies"]
    assert {r.split(">")[0] for r in extras["serve"]} == {"fastapi", "uvicorn", "prometheus-client"}
    assert any(r.startswith("ray[data]") for r in extras["ray"])


fastapi = pytest.importorskip("fastapi")

from dsocr.runtime.errors import ImageError, InputError  # noqa: E402
from dsocr.serve.media import load_media  # noqa: E402
from dsocr.serve.options import ServeOptions  # noqa: E402


@pytest.fixture
def loopback_http(tmp_path, sample_page):
    (tmp_path / "page.png").write_bytes(Path(sample_page).read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_remote_media_only_when_allowed(loopback_http, sample_page, tmp_path):
    closed = ServeOptions(bundle=tmp_path)
    with pytest.raises(InputError, match="--allow-remote-media"):
        load_media(loopback_http + "/page.png", closed)
    opened = closed.replace(allow_remote_media=True)
    image = load_media(loopback_http + "/page.png", opened)
    inline = load_media("data:image/png;base64," + base64.b64encode(Path(sample_page).read_bytes()).decode(), opened)
    assert image.size == inline.size and image.tobytes() == inline.tobytes()
    with pytest.raises(ImageError, match="cannot fetch"):
        load_media(loopback_http + "/missing.png", opened)
    with pytest.raises(ImageError, match="larger than the limit"):
        load_media(loopback_http + "/page.png", opened.replace(max_body_bytes=1024))


def test_local_media_stays_under_the_allowed_path(tmp_path, sample_page):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "page.png").write_bytes(Path(sample_page).read_bytes())
    (tmp_path / "secret.png").write_bytes(Path(sample_page).read_bytes())
    (allowed / "link.png").symlink_to(tmp_path / "secret.png")
    opts = ServeOptions(bundle=tmp_path, allowed_local_media_path=allowed)
    assert load_media((allowed / "page.png").as_uri(), opts).size[0] > 0
    for url in [(allowed / "link.png").as_uri(), (tmp_path / "secret.png").as_uri(),
                "file://" + str(allowed) + "/../secret.png"]:
        with pytest.raises(InputError, match="outside the allowed"):
            load_media(url, opts)
    with pytest.raises(InputError, match="--allowed-local-media-path"):
        load_media((allowed / "page.png").as_uri(), ServeOptions(bundle=tmp_path))
    with pytest.raises(InputError, match="unsupported image URL"):
        load_media("ftp://127.0.0.1/page.png", opts)


def test_options_are_validated(tmp_path):
    for bad in ({"port": 70000}, {"batch": 0}, {"max_queue": 0}, {"request_timeout_s": 0},
                {"allowed_local_media_path": tmp_path / "nope"}):
        with pytest.raises(InputError):
            ServeOptions(bundle=tmp_path, **bad)


def test_serve_exits_1_when_the_bundle_does_not_load(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dsocr.runtime.cli", "serve", "--model", str(tmp_path), "--port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "could not be loaded" in out.stderr and "manifest" in out.stderr.lower()
