"""The preallocated KV cache.

Layout, per layer i: key[i], value[i]: [B, S_max, H, hd] float ("BSHD"), keys stored after RoPE.
Allocated once at its maximum size; the decoder's present_* outputs are written in place at
[:, pos:pos+T] and its past_* inputs read the prefix [:, :pos]. For B = 1 both are contiguous views,
so no copy happens per step.
"""
from __future__ import annotations

import numpy as np

from .errors import CacheOverflowError


class KVCache:
    def __init__(self, num_layers: int, num_heads: int, head_dim: int, max_seq_len: int, batch: int = 1,
                 dtype: str | np.dtype = np.float32):
        shape = (batch, max_seq_len, num_heads, head_dim)
        self.key = [np.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.value = [np.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.max_seq_len = max_seq_len
        self.length = 0  # positions [0, length) hold valid entries

    @property
    def num_layers(self) -> int:
        return len(self.key)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.key + self.value)

    def reserve(self, new_tokens: int) -> tuple[int, int]:
        """Check room for `new_tokens` more and return the slot [start, stop)."""
        stop = self.length + new_tokens
        if stop > self.max_seq_len:
            raise CacheOverflowError(
                f"{stop} positions needed but the KV cache holds {self.max_seq_len} "
                f"(prompt plus generated tokens exceed max_seq_len)"
            )
        return self.length, stop

    def past(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Views [B, length, H, hd] of the valid prefix of layer `layer`."""
        return self.key[layer][:, : self.length], self.value[layer][:, : self.length]

    def slot(self, layer: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Views [B, stop-start, H, hd] where the decoder writes new entries."""
        return self.key[layer][:, start:stop], self.value[layer][:, start:stop]

    def commit(self, stop: int) -> None:
        self.length = stop

    def reset(self) -> None:
        self.length = 0  # entries beyond length are never read; no need to clear
