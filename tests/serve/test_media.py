"""Image URL rules of dsocr serve: data:, http(s) only when allowed (loopback server), file:// under a path."""
from __future__ import annotations

import base64
import functools
import http.server
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")


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

