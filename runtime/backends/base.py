"""Backend template (Polygraphy-runner style): public methods validate, then call `_impl` hooks.

A backend runs the bundle's graphs: vision per view size, token embedding, and one decoder pass
that reads the cache prefix and writes its new entries into the cache in place.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..kv_cache import KVCache, KVStep
from ..manifest import Manifest


class Backend(ABC):
    name = "base"
    # "device": the backend keeps the KV entries itself and the host cache only counts (kv_cache.KVStep);
    # None: the runner's policy binds host arrays
    kv_policy: str | None = None

    def __init__(self, bundle_dir: str | Path, manifest: Manifest):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest

    # -- public, validated ---------------------------------------------------------------------
    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values [B,3,S,S] float32 -> image features [B, g*g, D] float32."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or pixel_values.shape[2] != pixel_values.shape[3]:
            raise InputError(f"pixel_values must be [B,3,S,S], got {pixel_values.shape}")
        spec = self.manifest.vision_graph(int(pixel_values.shape[2]))
        return self._vision_impl(spec.file, np.ascontiguousarray(pixel_values, dtype=np.float32))

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids [B,T] int64 -> [B,T,D] float32."""
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if ids.ndim != 2:
            raise InputError(f"input_ids must be [B,T], got {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.manifest.vocab_size):
            raise InputError(f"token ids must lie in [0, {self.manifest.vocab_size})")
        return self._embed_impl(ids)

    def decode(self, embeds: np.ndarray, cos: np.ndarray, sin: np.ndarray, mask: np.ndarray,
               cache: KVCache | KVStep) -> np.ndarray:
        """One pass over T new tokens of n slots: embeds [n,T,D], cos/sin [n,T,hd], mask [n,1,T,P+T] -> logits [n,V].

        cache: a KVStep (`KVCache.step(slots, T)`: which slots, what P the past spans), or a KVCache
        whose slots all take part (batch 1: the cache itself). Writes the new K/V of slot b at
        [b, len_b:len_b+T] and advances its length by T; nothing is written when the pass fails.
        """
        step = cache if isinstance(cache, KVStep) else cache.step(range(cache.batch), embeds.shape[1])
        n, t = embeds.shape[0], embeds.shape[1]
        if n != step.batch or step.new_tokens != t:
            raise InputError(f"{n} rows of {t} tokens do not match a pass over {step.batch} slot(s) of {step.new_tokens}")
        if mask.shape != (n, 1, t, step.past_len + t):
            raise InputError(f"attention_mask {mask.shape} does not fit {step.past_len} past + {t} new positions "
                             f"for {n} slot(s)")
        logits = self._decode_impl(embeds, cos, sin, mask, step)
        step.commit()
        return logits

    @property
    def max_decode_batch(self) -> int | None:
        """The most slots one decoder pass may carry (None: no limit)."""
        return None

    def close(self) -> None:
        """Release what the backend holds (sessions, buffers); the backend is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- hooks -----------------------------------------------------------------------------------
    @abstractmethod
    def _vision_impl(self, graph_file: str, pixel_values: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _embed_impl(self, input_ids: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _decode_impl(self, embeds, cos, sin, mask, step: KVStep) -> np.ndarray:
        """Bind past_* to step.past(i), present_* to step.present(i); return logits [n, V]."""
