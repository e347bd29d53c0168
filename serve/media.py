"""`image_url` -> an RGB page image, every failure an ImageError / InputError (-> 400).

data: URLs (base64 PNG, JPEG or WebP) always; http(s) only when the server allows remote media;
file:// URLs only under --allowed-local-media-path (resolved, symlinks followed, then checked).
The pixel limit is read from the image header before anything is decoded.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dsocr.runtime.errors import ImageError, InputError
from dsocr.runtime.preprocess import load_image

from .options import ServeOptions

FORMATS = ("PNG", "JPEG", "WEBP")
DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*),(?P<data>.*)", re.DOTALL)
REMOTE_TIMEOUT_S = 30


def decode_image(data: bytes, max_pixels: int, what: str = "the image") -> Image.Image:
    """Encoded PNG/JPEG/WebP bytes -> RGB image; the size is checked from the header first."""
    if not data:
        raise ImageError(f"{what} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what} has more than the limit of {max_pixels:,} pixels ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{what} is not a PNG, JPEG or WebP image ({type(e).__name__}: {e})") from None
    if im.format not in FORMATS:
        raise ImageError(f"{what} is a {im.format} image; send PNG, JPEG or WebP")
    return load_image(im, max_pixels=max_pixels)


def _data_url(url: str, opts: ServeOptions) -> Image.Image:
    m = DATA_URL.fullmatch(url)
    if m is None or "base64" not in [p.strip().lower() for p in m["params"].split(";")]:
        raise ImageError("a data: URL must look like data:image/png;base64,<base64 data>")
    if m["type"] and not m["type"].lower().startswith("image/"):
        raise ImageError(f"the data: URL holds {m['type']}, not an image")
    try:
        data = base64.b64decode(re.sub(r"\s+", "", m["data"]), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"the data: URL's base64 is broken ({e})") from None
    return decode_image(data, opts.max_pixels, "the data: URL's image")


def _remote(url: str, opts: ServeOptions) -> Image.Image:
    if not opts.allow_remote_media:
        raise InputError("http(s) image URLs are refused by this server (start it with --allow-remote-media); "
                         "send the image inline as a data: URL")
    try:
        with urllib.request.urlopen(url, timeout=REMOTE_TIMEOUT_S) as r:  # noqa: S310 (scheme checked)
            data = r.read(opts.max_body_bytes + 1)
    except Exception as e:  # URLError, HTTPError, timeouts
        raise ImageError(f"cannot fetch {url}: {type(e).__name__}: {e}") from None
    if len(data) > opts.max_body_bytes:
        raise ImageError(f"{url} is larger than the limit of {opts.max_body_bytes:,} bytes")
    return decode_image(data, opts.max_pixels, url)


def _local(url: str, opts: ServeOptions) -> Image.Image:
    root = opts.allowed_local_media_path
    if root is None:
        raise InputError("file:// image URLs are refused by this server (start it with "
                         "--allowed-local-media-path DIR to allow files under DIR)")
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise InputError(f"{url}: a file:// URL must name a local path (file:///path)")
    path = Path(urllib.request.url2pathname(parsed.path)).resolve()
    if not path.is_relative_to(root):
        raise InputError(f"{url} lies outside the allowed local media path {root}")
    if not path.is_file():
        raise ImageError(f"{url}: no such file")
    if path.stat().st_size > opts.max_body_bytes:
        raise ImageError(f"{url} is larger than the limit of {opts.max_body_bytes:,} bytes")
    return decode_image(path.read_bytes(), opts.max_pixels, url)


def load_media(url: str, opts: ServeOptions) -> Image.Image:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _data_url(url, opts)
    if scheme in ("http", "https"):
        return _remote(url, opts)
    if scheme == "file":
        return _local(url, opts)
    raise InputError(f"unsupported image URL {url[:60]!r}: send a data: URL (data:image/png;base64,...)")
