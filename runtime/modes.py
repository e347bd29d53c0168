"""The mode registry: every resolution mode of DeepSeek-OCR as data.

Letters: S = square side fed to the encoder, G = S/16 (SAM grid), g = G/4 (token grid).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ModeError

PATCH = 16  # SAM patch size
DOWNSAMPLE = 4  # two stride-2 convs
TILE = 640  # Gundam tile side
MIN_TILES, MAX_TILES = 2, 9  # official HF default (vLLM scripts use 6)


@dataclass(frozen=True)
class Mode:
    name: str
    base_size: int  # global view side
    image_size: int  # tile side when crop, else == base_size
    crop: bool  # Gundam dynamic tiling
    pad: bool  # True: ImageOps.pad with mean colour; False: stretch-resize

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
        """Image tokens in the prompt: global rows+newlines+separator, plus the tile grid if tiled."""
        gb = self.global_grid
        n = gb * (gb + 1) + 1
        if self.crop and tiles_w * tiles_h > 1:
            gl = self.tile_grid
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
    )
}
MODE_NAMES = tuple(MODES)


def get_mode(name: str) -> Mode:
    try:
        return MODES[name.lower()]
    except (KeyError, AttributeError):
        raise ModeError(f"unknown mode {name!r}; choose one of: {', '.join(MODE_NAMES)}") from None
