"""Runtime inputs computed in numpy so the graphs stay static: RoPE tables and attention masks.

Letters: B batch, T new tokens, P cached tokens, hd head dim.
"""
from __future__ import annotations

import numpy as np

NEG_INF = np.float32(-3.4028234663852886e38)  # finfo(float32).min: masked logits (no inf*0 NaNs)


def rope_tables(positions: np.ndarray, head_dim: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """positions: [B, T] int -> (cos, sin): [B, T, hd] float32, NeoX half layout cat(f, f)."""
    exps = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(theta), exps)).astype(np.float32)  # [hd/2]
    freqs = positions.astype(np.float32)[..., None] * inv_freq  # [B, T, hd/2]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def attention_mask(past_len: int, new_len: int, batch: int = 1, pad_left: np.ndarray | None = None) -> np.ndarray:
    """Additive mask [B, 1, T, P+T]: causal over the new tokens, all cached positions visible.

    pad_left: [B] count of left-padding positions per row (masked as keys), or None.
    """
    total = past_len + new_len
    q = np.arange(new_len)[:, None] + past_len  # absolute query positions
    k = np.arange(total)[None, :]
    allowed = np.broadcast_to(k <= q, (batch, new_len, total)).copy()
    if pad_left is not None:
        allowed &= k[None] >= np.asarray(pad_left)[:, None, None]
    return np.where(allowed, np.float32(0), NEG_INF)[:, None].astype(np.float32)


def slot_mask(starts: np.ndarray, past_len: int, new_len: int) -> np.ndarray:
    """Additive mask [n, 1, T, P+T] for a pass over n slots: slot r sees its own cached positions
    [0, starts[r]) of the P bound past positions, and the new tokens causally.

    With starts == [P] (one slot, its whole prefix bound) this equals attention_mask(P, T).
    """
    starts = np.asarray(starts, dtype=np.int64)  # [n]
    k = np.arange(past_len)  # [P]
    past_ok = k[None, None, :] < starts[:, None, None]  # [n, 1, P]
    new_ok = np.arange(new_len)[None, :] <= np.arange(new_len)[:, None]  # [T, T]
    allowed = np.concatenate([np.broadcast_to(past_ok, (len(starts), new_len, past_len)),
                              np.broadcast_to(new_ok, (len(starts), new_len, new_len))], axis=-1)
    return np.where(allowed, np.float32(0), NEG_INF)[:, None].astype(np.float32)
