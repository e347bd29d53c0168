"""OCR-2's vision encoder after SAM: a Qwen2-style transformer run over [SAM tokens ; learned queries].

Official key names under `model.qwen2_model.`: `query_768.weight`, `query_1024.weight`,
`model.model.layers.N.*`, `model.model.norm.weight` (no token table, no persistent RoPE buffer).
Letters: B batch, n SAM tokens (= queries), L = 2n, C hidden (896), H query heads, K kv heads, hd head dim.

The attention mask (additive, finfo(float32).min where blocked): SAM rows see every SAM token and no
query; query i sees every SAM token and queries 0..i. RoPE positions run 0..L-1 over the whole sequence.
Only the n query outputs (after the final RMSNorm) are returned. Tables (mask, cos, sin) depend only on n
and are built once per n (graph constants at export).
"""
from __future__ import annotations

import torch
from torch import nn

from dsocr.export.config import Qwen2EncoderConfig
from dsocr.runtime.errors import InputError

from .decoder import RMSNorm, SwiGLU, rotate_half


def encoder_mask(n: int) -> torch.Tensor:
    """[2n, 2n] float32 additive mask: 0 where attended, finfo.min where blocked."""
    blocked = torch.finfo(torch.float32).min
    m = torch.full((2 * n, 2 * n), blocked, dtype=torch.float32)
    m[:, :n] = 0.0  # every row sees every SAM token
    m[n:, n:] = torch.triu(torch.full((n, n), blocked), diagonal=1)  # queries: causal among themselves
    return m


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [length, hd] for positions 0..length-1 (Qwen2 layout: the half-frequencies repeated)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


class Qwen2Attention(nn.Module):
    def __init__(self, cfg: Qwen2EncoderConfig):
        super().__init__()
        c, hd = cfg.hidden, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, hd
        self.q_proj = nn.Linear(c, cfg.heads * hd)
        self.k_proj = nn.Linear(c, cfg.kv_heads * hd)
        self.v_proj = nn.Linear(c, cfg.kv_heads * hd)
        self.o_proj = nn.Linear(cfg.heads * hd, c, bias=False)

    def forward(self, x, cos, sin, mask):  # x [B,L,C]; cos/sin [L,hd]; mask [L,L]
        b, length, _ = x.shape
        hd, rep = self.head_dim, self.heads // self.kv_heads
        q = self.q_proj(x).view(b, length, self.heads, hd).transpose(1, 2)  # [B,H,L,hd]
        k = self.k_proj(x).view(b, length, self.kv_heads, hd).transpose(1, 2)  # [B,K,L,hd]
        v = self.v_proj(x).view(b, length, self.kv_heads, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # GQA: kv head j serves query heads j*rep .. j*rep+rep-1 (HF repeat_kv)
        k = k[:, :, None].expand(b, self.kv_heads, rep, length, hd).reshape(b, self.heads, length, hd)
        v = v[:, :, None].expand(b, self.kv_heads, rep, length, hd).reshape(b, self.heads, length, hd)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (hd**-0.5) + mask
        out = torch.matmul(scores.float().softmax(-1).to(x.dtype), v)  # [B,H,L,hd]
        return self.o_proj(out.transpose(1, 2).reshape(b, length, self.heads * hd))


class Qwen2Layer(nn.Module):
    def __init__(self, cfg: Qwen2EncoderConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.self_attn = Qwen2Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden, cfg.intermediate_size)

    def forward(self, x, cos, sin, mask):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class _Trunk(nn.Module):
    """The Qwen2Model body: `layers`, `norm` (the official nesting is qwen2_model.model.model)."""

    def __init__(self, cfg: Qwen2EncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(Qwen2Layer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)


class _Wrapper(nn.Module):
    def __init__(self, cfg: Qwen2EncoderConfig):
        super().__init__()
        self.model = _Trunk(cfg)


class Qwen2Encoder(nn.Module):
    """SAM features [B, C, g, g] -> query outputs [B, g*g, C]; g*g picks the query table (144 or 256)."""

    def __init__(self, cfg: Qwen2EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.model = _Wrapper(cfg)
        for suffix, rows in cfg.queries:
            setattr(self, f"query_{suffix}", nn.Embedding(rows, cfg.hidden))
        self.frozen: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def queries(self, n: int) -> torch.Tensor:
        """The learned query table with n rows [n, C]; no table for other token counts (as official)."""
        for suffix, rows in self.cfg.queries:
            if rows == n:
                return getattr(self, f"query_{suffix}").weight
        sizes = ", ".join(f"{r} ({s} px view)" for s, r in self.cfg.queries)
        raise InputError(f"the OCR-2 encoder has query tables for {sizes} tokens, not {n}")

    def tables(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mask [2n,2n], cos [2n,hd], sin [2n,hd]); frozen ones are graph constants at export."""
        if n not in self.frozen:
            cos, sin = rope_tables(2 * n, self.cfg.head_dim, self.cfg.rope_theta)
            self.frozen[n] = (encoder_mask(n), cos, sin)
        return self.frozen[n]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, _, gh, gw = feats.shape
        n = int(gh) * int(gw)  # static per graph
        x = feats.flatten(2).transpose(1, 2)  # [B, n, C], row-major over the grid
        q = self.queries(n)
        x = torch.cat([x, q[None].expand(b, n, q.shape[-1]).to(x.dtype)], dim=1)  # [B, 2n, C]
        mask, cos, sin = self.tables(n)
        for layer in self.model.model.layers:
            x = layer(x, cos, sin, mask)
        return self.model.model.norm(x)[:, n:]
