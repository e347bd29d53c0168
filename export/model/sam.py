"""SAM ViT-B/16 (ViTDet style) + neck + the 16x compressor (net_2, net_3), official key names.

Letters: B batch, G SAM grid side (S/16), C width, n attended square side, g = G/4.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsocr.export.config import SamConfig


def resize_abs_pos(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """pos: [1, G0, G0, C] -> [1, grid, grid, C], bicubic with antialias in fp32 (official)."""
    if pos.shape[1] == grid:
        return pos
    x = pos.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos.dtype)


def rel_pos_table(rel_pos: torch.Tensor, n: int) -> torch.Tensor:
    """rel_pos: [L, c] -> R: [n, n, c], R[i, k] = rel_pos'[i - k + n - 1] (rel_pos' resized to 2n-1)."""
    size = 2 * n - 1
    if rel_pos.shape[0] != size:
        r = rel_pos.float().t().unsqueeze(0)  # [1, c, L]
        r = F.interpolate(r, size=size, mode="linear")
        rel_pos = r[0].t().to(rel_pos.dtype)
    idx = torch.arange(n)[:, None] - torch.arange(n)[None, :] + (n - 1)
    return rel_pos[idx]


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of an NCHW map (biased variance, sqrt(var + eps))."""

    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W]
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    def __init__(self, c: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, c, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,3,S,S] -> [B,G,G,C]
        return self.proj(x).permute(0, 2, 3, 1)


class Mlp(nn.Module):
    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(c, hidden)
        self.lin2 = nn.Linear(hidden, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class Attention(nn.Module):
    """MHA with decomposed relative positions (bias from the unscaled q, added to scaled logits)."""

    def __init__(self, c: int, heads: int, rel_size: int):
        super().__init__()
        self.heads = heads
        self.head_dim = c // heads
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))
        self.frozen: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Rh [h,h,hd], Rw [w,w,hd]); frozen ones are graph constants at export."""
        if (h, w) in self.frozen:
            return self.frozen[(h, w)]
        return rel_pos_table(self.rel_pos_h, h), rel_pos_table(self.rel_pos_w, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, n, n, C]
        b, h, w, c = x.shape
        nh, hd = self.heads, self.head_dim
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, hd).permute(2, 0, 3, 1, 4)  # [3, B, nh, n*n, hd]
        q, k, v = qkv[0], qkv[1], qkv[2]
        rh, rw = self.tables(int(h), int(w))  # [n, n, hd]  (i, k); sizes are static per graph
        rq = q.reshape(b * nh, h, w, hd)
        # rel_h[b, i, j, k] = <q[b,i,j], rh[i,k]> as a batched matmul over i (no Einsum in the graph)
        rel_h = torch.matmul(rq.permute(1, 0, 2, 3).reshape(h, b * nh * w, hd), rh.transpose(1, 2))
        rel_h = rel_h.reshape(h, b * nh, w, h).permute(1, 0, 2, 3)  # [B*nh, i, j, k]
        rel_w = torch.matmul(rq.permute(2, 0, 1, 3).reshape(w, b * nh * h, hd), rw.transpose(1, 2))
        rel_w = rel_w.reshape(w, b * nh, h, w).permute(1, 2, 0, 3)  # [B*nh, i, j, l]
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, nh, h * w, h * w)
        attn = torch.matmul(q, k.transpose(-1, -2)) * (hd**-0.5) + bias  # [B, nh, n*n, n*n]
        out = torch.matmul(attn.softmax(-1), v)  # [B, nh, n*n, hd]
        out = out.permute(0, 2, 1, 3).reshape(b, h, w, c)
        return self.proj(out)


def window_partition(x: torch.Tensor, win: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, C] -> [B*nw, win, win, C], zero-padding bottom/right (no mask, as official)."""
    b, h, w, c = x.shape
    ph, pw = (win - h % win) % win, (win - w % win) % win
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // win, win, wp // win, win, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, win, win, c), (hp, wp)


def window_unpartition(x: torch.Tensor, win: int, padded: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    hp, wp = padded
    b = x.shape[0] // ((hp // win) * (wp // win))
    x = x.view(b, hp // win, wp // win, win, win, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, : hw[0], : hw[1], :]


class Block(nn.Module):
    def __init__(self, cfg: SamConfig, window: int):
        super().__init__()
        c = cfg.width
        self.window = window  # 0 = global attention
        rel_size = window if window else cfg.img_size // cfg.patch
        self.norm1 = nn.LayerNorm(c, eps=1e-6)
        self.attn = Attention(c, cfg.heads, rel_size)
        self.norm2 = nn.LayerNorm(c, eps=1e-6)
        self.mlp = Mlp(c, int(c * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, G, G, C]
        y = self.norm1(x)
        if self.window:
            hw = (y.shape[1], y.shape[2])
            y, padded = window_partition(y, self.window)
            y = window_unpartition(self.attn(y), self.window, padded, hw)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class SamEncoder(nn.Module):
    """[B, 3, S, S] -> [B, 1024, g, g] (after neck, net_2, net_3)."""

    def __init__(self, cfg: SamConfig):
        super().__init__()
        g0 = cfg.img_size // cfg.patch
        self.patch_embed = PatchEmbed(cfg.width, cfg.patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, g0, g0, cfg.width))
        self.blocks = nn.ModuleList(
            Block(cfg, 0 if i in cfg.global_attn_indexes else cfg.window) for i in range(cfg.layers)
        )
        n = cfg.neck_dim
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.width, n, 1, bias=False), LayerNorm2d(n),
            nn.Conv2d(n, n, 3, padding=1, bias=False), LayerNorm2d(n),
        )
        c2, c3 = cfg.downsample_channels
        self.net_2 = nn.Conv2d(n, c2, 3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False)
        self.frozen: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def freeze_tables(self, size: int) -> None:
        """Precompute the size-dependent tables (resized pos-embed, rel-pos) for an S x S input."""
        grid = size // self.patch_embed.proj.stride[0]
        self.frozen[grid] = resize_abs_pos(self.pos_embed, grid)
        for blk in self.blocks:
            n = blk.window or grid
            blk.attn.frozen[(n, n)] = blk.attn.tables(n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # [B, G, G, C]
        grid = int(x.shape[1])  # static per graph (the batch dim stays symbolic)
        x = x + (self.frozen[grid] if grid in self.frozen else resize_abs_pos(self.pos_embed, grid))
        for blk in self.blocks:
            x = blk(x)
        x = self.neck(x.permute(0, 3, 1, 2))  # [B, 256, G, G]
        return self.net_3(self.net_2(x))  # [B, 1024, g, g]
