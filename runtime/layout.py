"""The prompt's token layout and where the image embeddings go (ARCHITECTURE §2.3, §3.1).

Letters: T = prompt length, N = image tokens, D = hidden size, g = global token grid side,
l = tile token grid side, (w, h) = tile columns and rows, n = w * h tiles.

Embedding order of one image (OCR-1): the tiles stitched into one (l*h) x (l*w) grid, each of its rows
followed by `newline`; then the g x g global grid, each row followed by `newline`; then one `separator`.
OCR-2 (`mode.newlines` False): every tile's l*l rows, tile by tile (row-major over the grid), then the
global view's g*g rows, then one `separator`; no newline, no 2-D re-layout.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import InputError


def assemble_prompt(before_ids: Sequence[int], after_ids: Sequence[int], n_image_tokens: int,
                    image_token_id: int, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """[bos] + before + [image] * N + after -> (input_ids int64 [T], images_seq_mask bool [T]). No EOS."""
    if isinstance(n_image_tokens, bool) or not isinstance(n_image_tokens, (int, np.integer)) or n_image_tokens < 0:
        raise InputError(f"n_image_tokens={n_image_tokens!r} must be a non-negative integer")
    before = np.asarray(before_ids, dtype=np.int64).reshape(-1)
    after = np.asarray(after_ids, dtype=np.int64).reshape(-1)
    n = int(n_image_tokens)
    ids = np.concatenate([np.array([bos_id], np.int64), before, np.full(n, image_token_id, np.int64), after])
    mask = np.zeros(len(ids), dtype=bool)
    mask[1 + len(before): 1 + len(before) + n] = True
    return ids, mask


def _grid_side(rows: int, what: str) -> int:
    side = math.isqrt(rows)
    if side * side != rows or side == 0:
        raise InputError(f"{what} has {rows} tokens, not a non-empty square grid")
    return side


def _with_newlines(grid: np.ndarray, newline: np.ndarray) -> np.ndarray:
    """[R, C, D] -> [R * (C + 1), D]: each row followed by `newline`."""
    r, _, d = grid.shape
    nl = np.broadcast_to(newline, (r, 1, d))
    return np.concatenate([grid, nl], axis=1).reshape(-1, d)


def _stitch_tiles(tile_feats: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """[n, l*l, D] (tiles row-major) -> [l*h, l*w, D]: tile t at block row t // w, block column t % w."""
    w, h = crop
    n, rows, d = tile_feats.shape
    if n != w * h:
        raise InputError(f"{n} tile features for a {w}x{h} tile grid (needs {w * h})")
    side = _grid_side(rows, "a tile")
    grid = tile_feats.reshape(h, w, side, side, d).transpose(0, 2, 1, 3, 4)  # [h, l, w, l, D]
    return grid.reshape(h * side, w * side, d)


def layout_image_embeds(global_feats: np.ndarray, tile_feats: np.ndarray | None, crop: tuple[int, int],
                        newline: np.ndarray, separator: np.ndarray) -> np.ndarray:
    """Vision features of one image -> its embeddings in prompt order [N, D].

    global_feats [g*g, D]; tile_feats [n, l*l, D] or None (no tiles); crop (w, h); newline, separator [D].
    N = l*h * (l*w + 1) + g * (g + 1) + 1 with tiles, g * (g + 1) + 1 without.
    """
    global_feats = np.asarray(global_feats)
    if global_feats.ndim != 2:
        raise InputError(f"global features must be [g*g, D], got shape {global_feats.shape}")
    d, dtype = global_feats.shape[1], global_feats.dtype
    newline = np.asarray(newline, dtype=dtype).reshape(-1)
    separator = np.asarray(separator, dtype=dtype).reshape(-1)
    if newline.shape != (d,) or separator.shape != (d,):
        raise InputError(f"newline {newline.shape} and separator {separator.shape} must both be ({d},)")
    w, h = (int(c) for c in crop)
    g = _grid_side(global_feats.shape[0], "the global view")
    parts = []
    if tile_feats is not None and len(tile_feats):
        tile_feats = np.asarray(tile_feats, dtype=dtype)
        if tile_feats.ndim != 3 or tile_feats.shape[2] != d:
            raise InputError(f"tile features must be [n, l*l, {d}], got shape {tile_feats.shape}")
        parts.append(_with_newlines(_stitch_tiles(tile_feats, (w, h)), newline))
    elif w * h != 1:
        raise InputError(f"crop {w}x{h} announces tiles but no tile features were given")
    parts.append(_with_newlines(global_feats.reshape(g, g, d), newline))
    parts.append(separator[None])
    return np.concatenate(parts, axis=0)


def layout_flat_embeds(global_feats: np.ndarray, tile_feats: np.ndarray | None, crop: tuple[int, int],
                       separator: np.ndarray) -> np.ndarray:
    """OCR-2: global_feats [g*g, D]; tile_feats [n, l*l, D] or None -> [n*l*l + g*g + 1, D]."""
    global_feats = np.asarray(global_feats)
    if global_feats.ndim != 2:
        raise InputError(f"global features must be [g*g, D], got shape {global_feats.shape}")
    d, dtype = global_feats.shape[1], global_feats.dtype
    separator = np.asarray(separator, dtype=dtype).reshape(-1)
    if separator.shape != (d,):
        raise InputError(f"separator {separator.shape} must be ({d},)")
    w, h = (int(c) for c in crop)
    parts = []
    if tile_feats is not None and len(tile_feats):
        tile_feats = np.asarray(tile_feats, dtype=dtype)
        if tile_feats.ndim != 3 or tile_feats.shape[2] != d:
            raise InputError(f"tile features must be [n, l*l, {d}], got shape {tile_feats.shape}")
        if tile_feats.shape[0] != w * h:
            raise InputError(f"{tile_feats.shape[0]} tile features for a {w}x{h} tile grid (needs {w * h})")
        parts.append(tile_feats.reshape(-1, d))
    elif w * h != 1:
        raise InputError(f"crop {w}x{h} announces tiles but no tile features were given")
    parts += [global_feats, separator[None]]
    return np.concatenate(parts, axis=0)


def layout_views(newlines: bool, global_feats: np.ndarray, tile_feats: np.ndarray | None, crop: tuple[int, int],
                 newline: np.ndarray | None, separator: np.ndarray) -> np.ndarray:
    """The mode's layout (`mode.newlines`): OCR-1's rows with newlines, or OCR-2's flat runs."""
    if newlines:
        if newline is None:
            raise InputError("this layout needs an image_newline vector, and the bundle has none")
        return layout_image_embeds(global_feats, tile_feats, crop, newline, separator)
    return layout_flat_embeds(global_feats, tile_feats, crop, separator)


def scatter_image_embeds(text_embeds: np.ndarray, images_seq_mask: np.ndarray,
                         image_embeds: np.ndarray) -> np.ndarray:
    """Prompt embeddings [T, D] with the image positions (mask True) replaced, in order, by image_embeds [N, D]."""
    text_embeds = np.asarray(text_embeds)
    mask = np.asarray(images_seq_mask, dtype=bool).reshape(-1)
    image_embeds = np.asarray(image_embeds)
    if text_embeds.ndim != 2 or mask.shape[0] != text_embeds.shape[0]:
        raise InputError(f"text embeddings {text_embeds.shape} and mask {mask.shape} disagree on the prompt length")
    n = int(mask.sum())
    if image_embeds.ndim != 2 or image_embeds.shape != (n, text_embeds.shape[1]):
        raise InputError(
            f"the prompt has {n} image positions of width {text_embeds.shape[1]}, "
            f"but the image embeddings are {image_embeds.shape}")
    out = text_embeds.copy()
    out[mask] = image_embeds
    return out
