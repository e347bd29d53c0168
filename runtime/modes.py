"""The mode registry: every resolution mode of DeepSeek-OCR (OCR-1) and DeepSeek-OCR-2 as data.

Letters: S = square side fed to the encoder, G = S/16 (SAM grid), g = G/4 (token grid).
OCR-1 lays each view out as g rows of g tokens, each row followed by `image_newline`; OCR-2 has no
newline: each view is its g*g query outputs in order (tiles first, then the global view).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ModeError

PATCH = 16  # SAM patch size
DOWNSAMPLE = 4  # two stride-2 convs
TILE = 640  # Gundam tile side
MIN_TILES, MAX_TILES = 2, 9  # official HF default (vLLM scripts use 6)
GENERATIONS = ("ocr1", "ocr2")  # DeepSeek-OCR, DeepSeek-OCR-2: a bundle is built for exactly one


@dataclass(frozen=True)
class Mode:
    name: str
    base_size: int  # global view side
    image_size: int  # tile side when crop, else == base_size
    crop: bool  # Gundam dynamic tiling
    pad: bool  # True: ImageOps.pad with mean colour; False: stretch-resize
    generation: str = "ocr1"  # the model generation whose bundles run this mode
    newlines: bool = True  # OCR-1: image_newline after every token row; OCR-2: none
    min_tiles: int = MIN_TILES  # tile grids with min_tiles <= w*h <= max_tiles (crop modes)
    max_tiles: int = MAX_TILES

    @property
    def global_grid(self) -> int:
        """g for the global view (tokens per row before the newline)."""
        return math.ceil((self.base_size // PATCH) / DOWNSAMPLE)

    @property
    def tile_grid(self) -> int:
        return math.ceil((self.image_size // PATCH) / DOWNSAMPLE)

    @property
    def vision_sizes(self) -> tuple[int, ...]:
        """Encoder input sides this mode needs a vision graph for (tiles first)."""
        return (self.image_size, self.base_size) if self.crop else (self.base_size,)

    def n_image_tokens(self, tiles_w: int = 1, tiles_h: int = 1) -> int:
        """Image tokens in the prompt: global view (+ newlines) + separator, plus the tiles if tiled."""
        gb, gl, tiled = self.global_grid, self.tile_grid, self.crop and tiles_w * tiles_h > 1
        if not self.newlines:  # OCR-2: g*g per view, no newline tokens
            return gb * gb + 1 + (gl * gl * tiles_w * tiles_h if tiled else 0)
        n = gb * (gb + 1) + 1
        if tiled:
            n += (gl * tiles_w + 1) * (gl * tiles_h)
        return n


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("tiny", 512, 512, crop=False, pad=False),
        Mode("small", 640, 640, crop=False, pad=False),
        Mode("base", 1024, 1024, crop=False, pad=True),
        Mode("large", 1280, 1280, crop=False, pad=True),
        Mode("gundam", 1024, 640, crop=True, pad=True),
        # OCR-2's one dynamic mode: 1024 global view padded with 127, 768 tiles (2..6) only for pages > 768
        Mode("ocr2", 1024, 768, crop=True, pad=True, generation="ocr2", newlines=False, max_tiles=6),
    )
}
MODE_NAMES = tuple(MODES)


def mode_names(generation: str) -> tuple[str, ...]:
    """The modes of one model generation, in registry order."""
    if generation not in GENERATIONS:
        raise ModeError(f"unknown model generation {generation!r}; one of {', '.join(GENERATIONS)}")
    return tuple(n for n, m in MODES.items() if m.generation == generation)


def check_generation(mode: "Mode", generation: str) -> None:
    """Refuse a mode of the other generation (an OCR-1 mode on an OCR-2 bundle, or the reverse)."""
    if mode.generation != generation:
        names = ", ".join(mode_names(generation))
        raise ModeError(
            f"mode {mode.name!r} is a DeepSeek-{_LABEL[mode.generation]} mode, but this is a "
            f"DeepSeek-{_LABEL[generation]} model/bundle; its modes: {names}")


_LABEL = {"ocr1": "OCR", "ocr2": "OCR-2"}


def get_mode(name: str) -> Mode:
    try:
        return MODES[name.lower()]
    except (KeyError, AttributeError):
        raise ModeError(f"unknown mode {name!r}; choose one of: {', '.join(MODE_NAMES)}") from None
