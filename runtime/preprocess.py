"""Page image -> normalised encoder inputs, exactly as the official code (ARCHITECTURE §3.2, §4).

Letters: S = global view side (mode.base_size), T = tile side (mode.image_size: 640 in Gundam, 768 in
OCR-2), n = number of tiles = w * h (w tile columns, h tile rows). Arrays are float32, channels first.
Both generations share these steps; the mode's data picks the sizes and the tile range.
Resizing is done by Pillow itself (BICUBIC, 8-bit intermediate): a numpy resize is not pixel-identical.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, InputError
from .inputs import display_path
from .modes import MAX_TILES, MIN_TILES, TILE, Mode, get_mode

MAX_PIXELS = 100_000_000  # ~300 MB as RGB8; the same cap as a rendered PDF page
PAD_COLOR = (127, 127, 127)  # int(0.5 * 255): the official fill, normalises to -1/255, not 0
MAX_TILES_LIMIT = 64  # sanity bound on a user-supplied max_tiles


@dataclass(frozen=True, eq=False)
class Views:
    """Encoder inputs of one page."""

    global_view: np.ndarray  # [1, 3, S, S] float32
    tiles: np.ndarray  # [n, 3, T, T] float32; [0, 3, T, T] without tiles (T = 640 in non-crop modes)
    crop: tuple[int, int]  # (w tiles, h tiles); (1, 1) without tiles

    @property
    def n_tiles(self) -> int:
        return int(self.tiles.shape[0])


# ----------------------------------------------------------------------------------------- loading


def _check_size(width: int, height: int, max_pixels: float, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{what} is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageError(
            f"{what} is {width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,}; "
            "downscale it (or render the PDF at a lower dpi)"
        )


def _open(src, what: str) -> Image.Image:
    """Path or bytes -> an opened (lazy, not yet decoded) PIL image."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageError("empty image data (0 bytes)")
        fp = io.BytesIO(bytes(src))
    else:
        path = Path(src)
        if not path.exists():
            raise ImageError(f"{what}: no such file")
        if not path.is_file():
            raise ImageError(f"{what}: not a file")
        fp = path
    try:
        with warnings.catch_warnings():  # load_image applies its own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what} is too large to decode safely: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, NotImplementedError) as e:
        raise ImageError(f"{what} is not a readable image ({e})") from None


def load_image(src, max_pixels: int = MAX_PIXELS, frame: int = 0) -> Image.Image:
    """A path, encoded bytes or a PIL image -> an RGB PIL image, EXIF orientation applied. The one
    image loader of dsocr (`dsocr run`, the Python API, the C API and calibration all read pages here).

    frame: which frame of a multi-frame file (TIFF pages, GIF/WebP animation frames), 0-based.
    Raises ImageError for a missing file, undecodable or truncated data, an empty image, a frame out
    of range, or one with more than `max_pixels` pixels (checked from the header, before decoding).
    """
    if isinstance(src, Image.Image):
        what, im = "image", src
    elif isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)):
        what = "image data" if isinstance(src, (bytes, bytearray, memoryview)) else display_path(src)
        im = _open(src, what)
    else:
        raise ImageError(f"cannot read an image from a {type(src).__name__}; pass a path, bytes or a PIL image")
    opened = None if im is src else im
    try:
        if frame:
            _seek(im, frame, what)
        _check_size(im.width, im.height, max_pixels, what)
        with warnings.catch_warnings():  # our own limit applies; Pillow's bomb warning is noise here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
            im = ImageOps.exif_transpose(im)
            return im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what} is too large to decode safely: {e}") from None
    except (OSError, SyntaxError, ValueError, NotImplementedError, EOFError) as e:
        raise ImageError(f"{what} could not be decoded ({e})") from None
    finally:
        if opened is not None:
            opened.close()


def _seek(im: Image.Image, frame: int, what: str) -> None:
    n = getattr(im, "n_frames", 1)
    if not 0 <= frame < n:
        raise ImageError(f"{what} has {n} frame(s); frame {frame} does not exist")
    im.seek(frame)


def image_frame_count(src) -> int:
    """Frames (pages) of an image file: TIFF pages, GIF/WebP/APNG animation frames; 1 for the rest."""
    what = display_path(src) if isinstance(src, (str, os.PathLike)) else "image data"
    im = _open(src, what)
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{what} could not be decoded ({e})") from None
    finally:
        im.close()


def image_from_rgb(buf, width: int, height: int, stride: int | None = None,
                   max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A raw RGB8 buffer (rows top to bottom, `stride` bytes apart, default 3*width) -> a PIL image (copied)."""
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ImageError(f"{name}={v!r} must be an integer")
    width, height = int(width), int(height)
    _check_size(width, height, max_pixels, "raw RGB image")
    row = 3 * width
    stride = row if stride is None else int(stride)
    if stride < row:
        raise ImageError(f"stride={stride} is smaller than a row of {width} RGB pixels ({row} bytes)")
    try:
        data = memoryview(buf).cast("B")
    except TypeError as e:
        raise ImageError(f"raw RGB data must be a bytes-like buffer, not {type(buf).__name__} ({e})") from None
    need = stride * (height - 1) + row
    if data.nbytes < need:
        raise ImageError(
            f"raw RGB buffer has {data.nbytes} bytes; {width}x{height} with stride {stride} needs {need}")
    return Image.frombytes("RGB", (width, height), bytes(data[:need]), "raw", "RGB", stride, 1)


# ------------------------------------------------------------------------------------------ tiling


def tile_candidates(min_tiles: int = MIN_TILES, max_tiles: int = MAX_TILES) -> list[tuple[int, int]]:
    """Grids (cols, rows) with min_tiles <= cols*rows <= max_tiles, in the official order.

    The official order is a stable sort by area of a Python set built in this insertion order, so within
    one area the order is CPython's set iteration order (deterministic for small int tuples).
    """
    grids = {(i, j) for n in range(min_tiles, max_tiles + 1)
             for i in range(1, n + 1) for j in range(1, n + 1) if min_tiles <= i * j <= max_tiles}
    return sorted(grids, key=lambda g: g[0] * g[1])


def _check_tiles(min_tiles: int, max_tiles: int) -> None:
    for name, v in (("min_tiles", min_tiles), ("max_tiles", max_tiles)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InputError(f"{name}={v!r} must be an integer")
    if not 2 <= min_tiles <= max_tiles <= MAX_TILES_LIMIT:
        raise InputError(
            f"need 2 <= min_tiles <= max_tiles <= {MAX_TILES_LIMIT}, got min_tiles={min_tiles}, max_tiles={max_tiles}")


def find_tile_grid(width: int, height: int, min_tiles: int = MIN_TILES, max_tiles: int = MAX_TILES,
                   tile: int = TILE) -> tuple[int, int]:
    """Gundam tile grid (w cols, h rows) for a width x height page; (1, 1) when both sides are <= tile.

    Picks the grid whose aspect ratio is closest to the page's; on an exact tie the later (larger)
    candidate wins only if the page area exceeds half the grid's pixel area.
    """
    _check_tiles(min_tiles, max_tiles)
    if width <= 0 or height <= 0:
        raise ImageError(f"image is empty ({width}x{height} pixels)")
    if width <= tile and height <= tile:
        return (1, 1)
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), math.inf
    for cols, rows in tile_candidates(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def cut_tiles(image: Image.Image, grid: tuple[int, int], tile: int = TILE) -> list[Image.Image]:
    """Stretch-resize to (tile*w, tile*h) and cut row-major: tile t at column t % w, row t // w."""
    cols, rows = grid
    resized = image.resize((tile * cols, tile * rows), Image.Resampling.BICUBIC)
    return [resized.crop(((t % cols) * tile, (t // cols) * tile, (t % cols + 1) * tile, (t // cols + 1) * tile))
            for t in range(cols * rows)]


# ---------------------------------------------------------------------------------- preprocessing


def to_chw(image: Image.Image) -> np.ndarray:
    """RGB image -> [3, H, W] float32 in [-1, 1]: (x/255 - 0.5)/0.5, as ToTensor + Normalize(0.5, 0.5)."""
    x = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255.0)  # [H, W, 3]
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def global_view(image: Image.Image, mode: Mode) -> Image.Image:
    """Pad modes: aspect-preserving resize into S x S, centred on the 127 fill; else stretch to S x S."""
    s = mode.base_size
    if mode.pad:
        return ImageOps.pad(image, (s, s), method=Image.Resampling.BICUBIC, color=PAD_COLOR)
    return image.resize((s, s), Image.Resampling.BICUBIC)


def preprocess(image, mode: Mode | str, max_tiles: int | None = None, min_tiles: int | None = None) -> Views:
    """A page (PIL image, or anything load_image reads) -> the encoder inputs for `mode`.

    max_tiles / min_tiles default to the mode's (OCR-1 Gundam 2..9, OCR-2 2..6). Tiles only when the page
    exceeds the tile side on a side. A PIL image is used as given (converted to RGB if needed); pass it
    through load_image first to get the official EXIF handling.
    """
    mode = get_mode(mode) if isinstance(mode, str) else mode
    max_tiles = mode.max_tiles if max_tiles is None else max_tiles
    min_tiles = mode.min_tiles if min_tiles is None else min_tiles
    _check_tiles(min_tiles, max_tiles)
    if isinstance(image, Image.Image):
        _check_size(image.width, image.height, math.inf, "image")  # the pixel cap is load_image's job
        image = image if image.mode == "RGB" else image.convert("RGB")
    else:
        image = load_image(image)
    glob = to_chw(global_view(image, mode))[None]  # [1, 3, S, S]
    t = mode.image_size
    grid = find_tile_grid(image.width, image.height, min_tiles, max_tiles, t) if mode.crop else (1, 1)
    if grid == (1, 1):
        side = t if mode.crop else TILE
        tiles = np.zeros((0, 3, side, side), np.float32)
    else:
        tiles = np.stack([to_chw(p) for p in cut_tiles(image, grid, t)])  # [n, 3, T, T]
    return Views(global_view=glob, tiles=tiles, crop=grid)
