"""The preallocated KV cache: B slots, each with its own length.

Layout, per layer i: key[i], value[i]: [B, S_max, H, hd] float ("BSHD"), keys stored after RoPE.
Allocated once at its maximum size (np.zeros: pages are committed only when written). Slot b holds
valid entries at [b, :lengths[b]].

One decoder pass over some slots is a `KVStep` (`cache.step(slots, T)`): it says what the graph's
past_* inputs are bound to and where its present_* outputs [n, T, H, hd] go, then `commit()`s:
- one slot ("prefix"): past = the contiguous view [b:b+1, :len_b], present = the view
  [b:b+1, len_b:len_b+T] (written in place, no copy; batch 1 is this case);
- several slots, "window" (the default): past = a working copy [n, W, H, hd] of the slots' rows over
  W = the longest slot rounded up to WINDOW_BUCKET positions; it is gathered only when the set of
  slots changes, a slot is refilled, or W must grow, and every pass appends to it in place, so a
  pass reads ~the longest slot, not S_max, and copies nothing per step;
- several slots, "full": past = the contiguous rows [b0:b1] over the whole capacity (P = S_max,
  no copy, but attention and the graph's Concat read S_max);
- several slots, "gather": past = a fresh copy of rows `slots` over [:P], P = the longest slot;
- several slots, "device": the backend keeps the entries itself (the TensorRT backend's device
  cache): P = the longest slot (what the mask spans), no host past, no staging; `commit()` only
  advances the lengths (past()/present() refuse).
The mask hides each slot's positions >= len_b. With several slots the present output is a small
staging buffer scattered to [b, len_b:len_b+T] per slot (and into the window) in `commit()`.
bench/batching.py measures the bounds (kv_bounds).

Letters: B slots, S_max capacity, P past positions bound, T new tokens, H heads, hd head dim.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import CacheOverflowError, InputError

POLICIES = ("auto", "window", "full", "gather", "device")  # auto: window; device: the backend holds the entries
WINDOW_BUCKET = 64  # positions the window grows by


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
        self._window: tuple | None = None  # (slots, W, [(k, v) [n, W, H, hd] per layer])

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
        self._window = None

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
        self._window = None

    def reset(self, slot: int | None = None) -> None:
        """Empty one slot (or all); entries beyond a length are never read, so nothing is cleared."""
        if slot is None:
            self.lengths[:] = 0
        else:
            self.lengths[slot] = 0
        self._window = None

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
        """"prefix" (one slot), else the policy's bound ("window" for auto; "device" as is; "full"
        needs the slots to be consecutive rows, else it gathers)."""
        if len(slots) == 1:
            return "prefix"
        if self.policy in ("auto", "window"):
            return "window"
        if self.policy == "device":
            return "device"
        contiguous = list(slots) == list(range(slots[0], slots[0] + len(slots)))
        return "full" if self.policy == "full" and contiguous else "gather"

    def window(self, slots: Sequence[int], need: int) -> tuple[int, list]:
        """The working copy of rows `slots` over W >= need positions: (W, [(k, v)] per layer)."""
        key = tuple(slots)
        if self._window is None or self._window[0] != key or self._window[1] < need:
            w = min(self.max_seq_len, -(-need // WINDOW_BUCKET) * WINDOW_BUCKET)
            self._window = None  # drop the old copy first
            bufs = [(np.take(k[:, :w], key, axis=0), np.take(v[:, :w], key, axis=0))
                    for k, v in zip(self.key, self.value)]
            self._window = (key, w, bufs)
        return self._window[1], self._window[2]

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
        self._win = None
        if bound == "prefix":
            self.past_len = int(self.starts[0])
        elif bound == "window":
            self.past_len, self._win = cache.window(slots, int(self.starts.max()) + new_tokens)
        elif bound == "full":
            self.past_len = cache.max_seq_len
        else:  # gather, device
            self.past_len = int(self.starts.max())
        n, t = len(slots), new_tokens
        shape = (n, t) + cache.key[0].shape[2:]
        self._staging = None if bound in ("prefix", "device") else [
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
        self._host_bound()
        if self.bound == "prefix":
            return k[s[0]:s[0] + 1, : self.past_len], v[s[0]:s[0] + 1, : self.past_len]
        if self.bound == "window":
            return self._win[layer]
        if self.bound == "full":
            return k[s[0]:s[-1] + 1], v[s[0]:s[-1] + 1]
        p = self.past_len
        return np.take(k[:, :p], s, axis=0), np.take(v[:, :p], s, axis=0)

    def present(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous arrays [n, T, H, hd] the graph's present_key / present_value outputs fill."""
        self._host_bound()
        if self._staging is None:
            b, a = self.slots[0], int(self.starts[0])
            z = a + self.new_tokens
            return self.cache.key[layer][b:b + 1, a:z], self.cache.value[layer][b:b + 1, a:z]
        return self._staging[layer]

    def _host_bound(self) -> None:
        if self.bound == "device":
            raise InputError("this pass's K/V entries live in the backend (KV policy 'device'): it has no host past "
                             "or present")

    def commit(self) -> None:
        """Scatter staged entries to [b, len_b:len_b+T] and advance every slot's length by T."""
        t = self.new_tokens
        if self._staging is not None:
            rows = np.asarray(self.slots)[:, None]  # [n, 1]
            cols = self.starts[:, None] + np.arange(t)[None]  # [n, T]
            for i, (sk, sv) in enumerate(self._staging):
                self.cache.key[i][rows, cols] = sk
                self.cache.value[i][rows, cols] = sv
                if self._win is not None:
                    wk, wv = self._win[i]
                    wk[np.arange(len(self.slots))[:, None], cols] = sk
                    wv[np.arange(len(self.slots))[:, None], cols] = sv
        elif self.cache._window is not None and set(self.slots) & set(self.cache._window[0]):
            self.cache._window = None  # a slot of the window was written around it
        self.cache.lengths[self.slots] += t
