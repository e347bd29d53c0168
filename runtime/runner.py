"""BundleRunner: forward + KV bookkeeping over a backend for N slots (the `Runner` seam of the decode
loop is slot 0 of it: batch 1 is N = 1 of the same code).

A pass is a pure function of (tokens, positions, cache): each slot's RoPE positions are its own
length onwards, its mask row hides what it does not own (rope.slot_mask); the backend writes the new
K/V into the cache (kv_cache.KVStep).

The RoPE tables of every position the cache can hold are computed once ([S_max, hd] each, 8 MiB for
8192 positions) and indexed per pass; a one-slot, one-token step's mask (every cached position
visible) is a view of one zero row, and its tables are contiguous views: it allocates no tables.

Letters: n slots in a pass, T new tokens, D hidden, V vocab.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .backends.base import Backend
from .kv_cache import KVCache
from .rope import rope_tables, slot_mask


class BundleRunner:
    def __init__(self, backend: Backend, max_seq_len: int | None = None, slots: int = 1, policy: str = "auto"):
        """policy: how a pass over several slots binds the host cache (kv_cache.POLICIES); a backend that
        keeps the entries itself (kv_policy "device": TensorRT) gets its own, whatever the policy."""
        m = backend.manifest
        policy = getattr(backend, "kv_policy", None) or policy  # duck-typed backends may lack it
        self.backend = backend
        self.theta = m.rope_theta
        self.head_dim = m.kv.head_dim
        limit = m.kv.max_seq_len if max_seq_len is None else min(int(max_seq_len), m.kv.max_seq_len)
        self.cache = KVCache(m.kv.num_layers, m.kv.num_heads, m.kv.head_dim, limit, batch=slots,
                             dtype=m.kv.dtype, policy=policy)
        cos, sin = rope_tables(np.arange(limit)[None], self.head_dim, self.theta)
        self._cos, self._sin = cos[0], sin[0]  # [S_max, hd]
        self._step_mask = np.zeros((1, 1, 1, limit), dtype=np.float32)  # slot_mask([p], p, 1) == [..., :p+1]

    @property
    def slots(self) -> int:
        return self.cache.batch

    @property
    def max_seq_len(self) -> int:
        return self.cache.max_seq_len

    # -- the Runner protocol: slot 0 -------------------------------------------------------------
    @property
    def position(self) -> int:
        return int(self.cache.lengths[0])

    def reset(self) -> None:
        self.cache.reset()

    def prefill(self, input_embeds: np.ndarray) -> np.ndarray:
        """input_embeds [T, D] (text embeddings with image embeddings scattered in) -> logits [V]."""
        return self.forward([0], input_embeds[None])[0]

    def step(self, token_id: int) -> np.ndarray:
        return self.step_slots([0], [token_id])[0]

    # -- slots -----------------------------------------------------------------------------------
    def length(self, slot: int) -> int:
        return int(self.cache.lengths[slot])

    def free(self, slot: int) -> None:
        self.cache.reset(slot)

    def prefill_slot(self, slot: int, input_embeds: np.ndarray) -> np.ndarray:
        """Empty `slot`, then prefill it: input_embeds [T, D] -> logits [V] (other slots untouched)."""
        self.cache.reset(slot)
        return self.forward([slot], input_embeds[None])[0]

    def step_slots(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """Feed one id to each slot in one pass: -> logits [n, V] (row r for slots[r])."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(len(slots), 1)
        return self.forward(slots, self.backend.embed(ids))

    def forward(self, slots: Sequence[int], embeds: np.ndarray) -> np.ndarray:
        """embeds [n, T, D] for `slots` -> logits [n, V]. Sizes are checked before anything grows with T.
        A backend that carries fewer slots per pass (max_decode_batch) gets several passes."""
        n, t = embeds.shape[0], embeds.shape[1]
        most = getattr(self.backend, "max_decode_batch", None)  # duck-typed backends (calibration's recorder)
        if most is not None and n > most:
            self.cache.room(slots, t)  # all or nothing
            return np.concatenate([self.forward(slots[k:k + most], embeds[k:k + most]).copy()
                                   for k in range(0, n, most)])
        step = self.cache.step(slots, t)  # CacheOverflowError here, before the [T, P+T] mask exists
        if n == 1:
            p = int(step.starts[0])
            cos, sin = self._cos[None, p:p + t], self._sin[None, p:p + t]
            full = step.past_len == p
            mask = self._step_mask[..., : p + 1] if t == 1 and full else slot_mask(step.starts, step.past_len, t)
        else:
            pos = step.starts[:, None] + np.arange(t)[None]  # [n, T]
            cos, sin = self._cos[pos], self._sin[pos]  # [n, T, hd]
            mask = slot_mask(step.starts, step.past_len, t)
        return self.backend.decode(embeds, cos, sin, mask, step)
