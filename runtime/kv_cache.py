"""The preallocated KV cache: B slots, each with its own length.

Layout, per layer i: key[i], value[i]: [B, S_max, H, hd] float ("BSHD"), keys stored after RoPE.
Allocated once at its maximum size (np.zeros: pages are committed only when written). Slot b holds
valid entries at [b, :lengths[b]].

One decoder pass over some slots is a `KVStep` (`cache.step(slots, T)`): it says what the graph's
past_* inputs are bound to and where its present_* outputs [n, T, H, hd] go, then `commit()`s:
- one slot: past = the contiguous view [b:b+1, :len_b], present = the view [b:b+1, len_b:len_b+T]
  (written in place, no copy; batch 1 is this case);
- several slots, "full" bound: past = the contiguous rows [b0:b1] over the whole capacity
  (P = S_max, no copy; the mask hides each slot's positions >= len_b);
- several slots, "gather" bound: past = a copy of rows `slots` over [:P], P = the longest slot
  (attention reads P instead of S_max, at the price of a copy of P entries per layer).
With several slots the present output is a small staging buffer scattered to [b, len_b:len_b+T] per
slot in `commit()`. The bound is chosen per step by `KVCache.policy` (see `choose_bound`).

Letters: B slots, S_max capacity, P past positions bound, T new tokens, H heads, hd head dim.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import CacheOverflowError, InputError

POLICIES = ("auto", "full", "gather")
# auto: gather when GATHER_RATIO * P <= S_max. bench/batching.py measures both bounds (kv_bounds);
# on the demo bundle and a wider reduced model a gathered step cost about as much as a full one
# with P near S_max / 4 (copy + attention over P vs attention over S_max).
GATHER_RATIO = 4


class KVCache:
    def __init__(self, num_layers: int, num_heads: int, head_dim: int, max_seq_len: int, batch: int = 1,
                 dtype: str | np.dtype = np.float32, policy: str = "auto"):
        if batch < 1 or max_seq_len < 1:
            raise InputError(f"a KV cache needs batch >= 1 and max_seq_len >= 1 (got {batch}, {max_seq_len})")
        if policy not in POLICIES:
            raise InputError(f"KV bound policy {policy!r}: choose one of {POLICIES}")
        shape = (batch, max_seq_len, num_heads, head_dim)
        self.key = [np.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.value = [np.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.max_seq_len = max_seq_len
        self.lengths = np.zeros(batch, dtype=np.int64)  # [B]: slot b holds [0, lengths[b])
        self.policy = policy

    @staticmethod
    def bytes_per_slot(num_layers: int, num_heads: int, head_dim: int, max_seq_len: int, dtype="float32") -> int:
        return 2 * num_layers * max_seq_len * num_heads * head_dim * np.dtype(dtype).itemsize

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def num_layers(self) -> int:
        return len(self.key)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.key + self.value)

    # -- batch-1 view (slot 0 when B = 1; all slots alike otherwise) ---------------------------------
    @property
    def length(self) -> int:
        return int(self.lengths.max())

    @length.setter
    def length(self, value: int) -> None:
        self.lengths[:] = int(value)

    def reserve(self, new_tokens: int) -> tuple[int, int]:
        """Check room for `new_tokens` more in every slot; the common [start, stop) (batch 1 API)."""
        self.room(range(self.batch), new_tokens)
        return self.length, self.length + new_tokens

    def past(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Views [B, length, H, hd] of the valid prefix of layer `layer` (slots of equal length)."""
        return self.key[layer][:, : self.length], self.value[layer][:, : self.length]

    def slot(self, layer: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Views [B, stop-start, H, hd] where the decoder writes new entries."""
        return self.key[layer][:, start:stop], self.value[layer][:, start:stop]

    def commit(self, stop: int) -> None:
        self.lengths[:] = stop

    def reset(self, slot: int | None = None) -> None:
        """Empty one slot (or all); entries beyond a length are never read, so nothing is cleared."""
        if slot is None:
            self.lengths[:] = 0
        else:
            self.lengths[slot] = 0

    # -- slots ---------------------------------------------------------------------------------------
    def room(self, slots: Sequence[int], new_tokens: int) -> None:
        """Raise CacheOverflowError (nothing written) unless every slot has room for `new_tokens`."""
        need = int(max(self.lengths[list(slots)])) + int(new_tokens) if len(slots) else 0
        if need > self.max_seq_len:
            raise CacheOverflowError(
                f"{need} positions needed but the KV cache holds {self.max_seq_len} "
                f"(prompt plus generated tokens exceed max_seq_len)"
            )

    def choose_bound(self, slots: Sequence[int]) -> str:
        """"prefix" (one slot), "full" or "gather" for a pass over `slots`."""
        if len(slots) == 1:
            return "prefix"
        contiguous = list(slots) == list(range(slots[0], slots[0] + len(slots)))
        if self.policy == "gather" or not contiguous:
            return "gather"
        if self.policy == "full":
            return "full"
        longest = int(self.lengths[list(slots)].max())
        return "gather" if GATHER_RATIO * longest <= self.max_seq_len else "full"

    def step(self, slots: Sequence[int], new_tokens: int) -> "KVStep":
        """Plan one pass of `new_tokens` over `slots` (raises CacheOverflowError when one is full)."""
        slots = [int(s) for s in slots]
        if not slots or len(set(slots)) != len(slots) or min(slots) < 0 or max(slots) >= self.batch:
            raise InputError(f"slots {slots} must be distinct indices in [0, {self.batch})")
        self.room(slots, new_tokens)
        return KVStep(self, slots, int(new_tokens), self.choose_bound(slots))


class KVStep:
    """One decoder pass: `past(i)` / `present(i)` per layer, `starts` [n] (each slot's length before
    the pass), `past_len` P (what the mask's past part spans), then `commit()`."""

    def __init__(self, cache: KVCache, slots: list[int], new_tokens: int, bound: str):
        self.cache, self.slots, self.new_tokens, self.bound = cache, slots, new_tokens, bound
        self.starts = cache.lengths[slots].copy()  # [n]
        if bound == "prefix":
            self.past_len = int(self.starts[0])
        elif bound == "full":
            self.past_len = cache.max_seq_len
        else:
            self.past_len = int(self.starts.max())
        n, t = len(slots), new_tokens
        shape = (n, t) + cache.key[0].shape[2:]
        self._staging = None if bound == "prefix" else [
            (np.empty(shape, cache.key[0].dtype), np.empty(shape, cache.key[0].dtype)) for _ in cache.key]

    @property
    def batch(self) -> int:
        return len(self.slots)

    @property
    def num_layers(self) -> int:
        return self.cache.num_layers

    def past(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous arrays [n, P, H, hd] for the graph's past_key / past_value inputs."""
        k, v, s = self.cache.key[layer], self.cache.value[layer], self.slots
        if self.bound == "prefix":
            return k[s[0]:s[0] + 1, : self.past_len], v[s[0]:s[0] + 1, : self.past_len]
        if self.bound == "full":
            return k[s[0]:s[-1] + 1], v[s[0]:s[-1] + 1]
        p = self.past_len
        return np.take(k[:, :p], s, axis=0), np.take(v[:, :p], s, axis=0)

    def present(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous arrays [n, T, H, hd] the graph's present_key / present_value outputs fill."""
        if self._staging is None:
            b, a = self.slots[0], int(self.starts[0])
            z = a + self.new_tokens
            return self.cache.key[layer][b:b + 1, a:z], self.cache.value[layer][b:b + 1, a:z]
        return self._staging[layer]

    def commit(self) -> None:
        """Scatter staged entries to [b, len_b:len_b+T] and advance every slot's length by T."""
        t = self.new_tokens
        if self._staging is not None:
            rows = np.asarray(self.slots)[:, None]  # [n, 1]
            cols = self.starts[:, None] + np.arange(t)[None]  # [n, T]
            for i, (sk, sv) in enumerate(self._staging):
                self.cache.key[i][rows, cols] = sk
                self.cache.value[i][rows, cols] = sv
        self.cache.lengths[self.slots] += t
