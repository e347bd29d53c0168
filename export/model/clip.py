"""CLIP-L/14 trunk fed with SAM features instead of its patch embedding, official key names.

Letters: B batch, g token grid side, T = 1 + g*g, C width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsocr.export.config import ClipConfig


def resize_clip_pos(table: torch.Tensor, grid: int) -> torch.Tensor:
    """table: [1 + g0*g0, C] -> [1 + grid*grid, C]; CLS kept, patch part bicubic+antialias (fp32)."""
    g0 = int(round((table.shape[0] - 1) ** 0.5))
    if g0 == grid:
        return table
    cls, patch = table[:1], table[1:]
    x = patch.float().reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    x = x.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(table.dtype)
    return torch.cat([cls, x], dim=0)


class Embeddings(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.width))
        # Present in the checkpoint, never used: SAM features replace the patch embedding.
        self.patch_embedding = nn.Conv2d(3, cfg.width, cfg.patch, stride=cfg.patch, bias=False)
        self.position_embedding = nn.Embedding(cfg.grid * cfg.grid + 1, cfg.width)
        # Official persistent buffer; the positions actually looked up (arange unless a checkpoint says otherwise).
        self.register_buffer("position_ids", torch.arange(cfg.grid * cfg.grid + 1)[None], persistent=True)
        self.frozen: dict[int, torch.Tensor] = {}

    def pos(self, grid: int) -> torch.Tensor:
        """Position table [1 + grid*grid, C]; frozen ones are graph constants at export."""
        if grid in self.frozen:
            return self.frozen[grid]
        return resize_clip_pos(self.position_embedding(self.position_ids[0]), grid)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # feats: [B, C, g, g] -> [B, T, C]
        b, c, g, _ = feats.shape
        x = feats.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(b, 1, c).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        return x + self.pos(int(g))  # g is static per graph


class SelfAttention(nn.Module):
    def __init__(self, c: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv_proj = nn.Linear(c, 3 * c)
        self.out_proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C]
        b, t, c = x.shape
        hd = c // self.heads
        qkv = self.qkv_proj(x).reshape(b, t, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, h, T, hd]
        attn = torch.matmul(q, k.transpose(-1, -2)) * (hd**-0.5)
        out = torch.matmul(attn.softmax(-1), v)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


class Mlp(nn.Module):
    def __init__(self, c: int, ffn: int):
        super().__init__()
        self.fc1 = nn.Linear(c, ffn)
        self.fc2 = nn.Linear(ffn, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu


class Layer(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=1e-5)
        self.self_attn = SelfAttention(cfg.width, cfg.heads)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=1e-5)
        self.mlp = Mlp(cfg.width, cfg.ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))


class ClipTrunk(nn.Module):
    """SAM features [B, C, g, g] -> CLIP tokens [B, g*g, C] (CLS dropped, no post-layernorm)."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.width, eps=1e-5)
        self.transformer = Transformer(cfg)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.pre_layrnorm(self.embeddings(feats))
        for layer in self.transformer.layers:
            x = layer(x)
        return x[:, 1:]
