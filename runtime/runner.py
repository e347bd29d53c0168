"""BundleRunner: forward + KV bookkeeping over a backend (the `Runner` seam of the decode loop).

A step is a pure function of (token, position, cache): RoPE tables and the mask are computed here
in numpy from the position; the backend writes the new K/V into the cache in place.

The RoPE tables of every position the cache can hold are computed once ([1, S_max, hd] each, 8 MiB
for 8192 positions) and sliced per call; a one-token step's mask (every cached position visible) is
a view of one zero row. Slices are contiguous views: a step allocates no tables.
"""
from __future__ import annotations

import numpy as np

from .backends.base import Backend
from .kv_cache import KVCache
from .rope import attention_mask, rope_tables


class BundleRunner:
    def __init__(self, backend: Backend, max_seq_len: int | None = None):
        m = backend.manifest
        self.backend = backend
        self.theta = m.rope_theta
        self.head_dim = m.kv.head_dim
        limit = m.kv.max_seq_len if max_seq_len is None else min(int(max_seq_len), m.kv.max_seq_len)
        self.cache = KVCache(m.kv.num_layers, m.kv.num_heads, m.kv.head_dim, limit, dtype=m.kv.dtype)
        self._cos, self._sin = rope_tables(np.arange(limit)[None], self.head_dim, self.theta)  # [1, S_max, hd]
        self._step_mask = np.zeros((1, 1, 1, limit), dtype=np.float32)  # attention_mask(p, 1) == [..., :p+1]

    @property
    def position(self) -> int:
        return self.cache.length

    def reset(self) -> None:
        self.cache.reset()

    def _forward(self, embeds: np.ndarray) -> np.ndarray:  # embeds [1, T, D] -> logits [V]
        p, t = self.cache.length, embeds.shape[1]
        mask = self._step_mask[..., : p + 1] if t == 1 else attention_mask(p, t)
        return self.backend.decode(embeds, self._cos[:, p : p + t], self._sin[:, p : p + t], mask, self.cache)[0]

    def prefill(self, input_embeds: np.ndarray) -> np.ndarray:
        """input_embeds [T, D] (text embeddings with image embeddings scattered in) -> logits [V]."""
        return self._forward(input_embeds[None])

    def step(self, token_id: int) -> np.ndarray:
        return self._forward(self.backend.embed(np.array([[token_id]], dtype=np.int64)))
