"""DeepSeek-3B-MoE decoder (DeepSeek-V2 with MHA), official key names, explicit KV cache I/O.

Letters: B batch, T new tokens, P cached tokens, D hidden, H heads, hd head dim, E routed experts.
KV layout (one pair per layer): [B, P, H, hd] ("BSHD"), keys stored after RoPE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsocr.export.config import DecoderConfig


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)  # cast first, then the gain (official order)


class SwiGLU(nn.Module):
    def __init__(self, d: int, inner: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, inner, bias=False)
        self.up_proj = nn.Linear(d, inner, bias=False)
        self.down_proj = nn.Linear(inner, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        # x: [B,T,D]; cos/sin: [B,T,hd]; mask: [B,1,T,P+T]; past_k/v: [B,P,H,hd]
        b, t, d = x.shape
        shape = (b, t, self.heads, self.head_dim)
        q, k, v = self.q_proj(x).view(shape), self.k_proj(x).view(shape), self.v_proj(x).view(shape)
        c, s = cos.unsqueeze(2), sin.unsqueeze(2)  # [B,T,1,hd]
        q = q * c + rotate_half(q) * s
        k = k * c + rotate_half(k) * s
        # The past is read where it lies, never concatenated with the new entries (a Concat would
        # copy all P cached positions of every layer on every step): scores and the weighted sum
        # are split into a past part and a new part.
        qh, p = q.transpose(1, 2), past_k.shape[1]  # [B,H,T,hd]
        scores = torch.cat([torch.matmul(qh, past_k.permute(0, 2, 3, 1)),  # [B,H,T,P]
                            torch.matmul(qh, k.permute(0, 2, 3, 1))], dim=-1)  # [B,H,T,P+T]
        probs = (scores * (self.head_dim**-0.5) + mask).float().softmax(-1).to(x.dtype)
        out = (torch.matmul(probs[..., :p], past_v.transpose(1, 2))  # [B,H,T,hd]
               + torch.matmul(probs[..., p:], v.transpose(1, 2)))
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d)), k, v


class GatheredExperts(nn.Module):
    """The routed experts of one MoE for a few tokens: softmax, top-k, Gather of the selected experts'
    stacked weights, batched SwiGLU. No parameters of its own (the stacks are the MoE's); a module so
    that its ONNX nodes share the scope `<mlp>/routed/` (calibration lowers that scope to QMoE)."""

    def __init__(self, top_k: int, norm: bool, scale: float):
        super().__init__()
        self.top_k, self.norm, self.scale = top_k, norm, scale

    def forward(self, flat, logits, gate, up, down):
        # flat [N, D]; logits [N, E] fp32; gate/up [E, D, I], down [E, I, D] -> [N, D] fp32
        w, idx = torch.topk(logits.softmax(-1), self.top_k, dim=-1)  # [N, k]
        if self.norm:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        w = w * self.scale
        xs = flat[:, None, None, :]  # [N, 1, 1, D]
        h = F.silu(torch.matmul(xs, gate[idx])) * torch.matmul(xs, up[idx])  # [N, k, 1, I]
        y = torch.matmul(h, down[idx]).squeeze(2).float()  # [N, k, D]
        return torch.matmul(w.unsqueeze(1), y).squeeze(1)  # [N, 1, k] @ [N, k, D] -> [N, D]


class MoE(nn.Module):
    """Softmax top-k routing (greedy, no renormalisation), routed experts + one shared SwiGLU.

    Formulations (what the ONNX graph computes; all equal in exact arithmetic):
      sparse  each expert on its routed tokens only: NonZero/Gather/ScatterND per expert (E chains,
              data-dependent shapes; the prefill graph).
      dense   every expert on every token, weighted by the (mostly zero) routing weights.
      gather  decode steps (N = B*T small): TopK, then Gather of the selected experts' stacked
              weights [N, k, ...] and batched MatMuls (GatheredExperts); static shapes, only k
              experts read per token.
    """

    FORMULATIONS = ("sparse", "dense", "gather")

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.top_k, self.scale, self.norm = cfg.num_experts_per_tok, cfg.routed_scaling_factor, cfg.norm_topk_prob
        self.gate = nn.Linear(d, cfg.n_routed_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d, cfg.moe_intermediate_size) for _ in range(cfg.n_routed_experts))
        self.shared_experts = SwiGLU(d, cfg.moe_intermediate_size * cfg.n_shared_experts)
        self.routed = GatheredExperts(self.top_k, self.norm, self.scale)

    def topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [N, D] -> (router probs [N, E], routing weights [N, k], expert ids [N, k] int64), fp32."""
        probs = F.linear(x.float(), self.gate.weight.float()).softmax(-1)
        w, idx = torch.topk(probs, self.top_k, dim=-1)
        if self.norm:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return probs, w * self.scale, idx

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, D] -> dense routing weights [N, E] (zero off the top-k), fp32."""
        probs, w, idx = self.topk(x)
        return torch.zeros_like(probs).scatter(1, idx, w)

    @torch.no_grad()
    def stack_experts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The routed experts' weights stacked, made once: gate/up W^T [E, D, I], down W^T [E, I, D].

        The experts' own weights become views into these stacks (no second copy; peak + one expert
        while stacking). The stacks are buffers `stack_{gate,up,down}` (in the state dict from then on,
        next to the official keys) so that a traced graph takes them as weights, not constants.
        """
        if not hasattr(self, "stack_gate"):
            for name in ("gate_proj", "up_proj", "down_proj"):
                first = getattr(self.experts[0], name).weight  # [out, in]
                stack = torch.empty(len(self.experts), first.shape[1], first.shape[0], dtype=first.dtype)
                for e, expert in enumerate(self.experts):
                    lin = getattr(expert, name)
                    stack[e].copy_(lin.weight.t())
                    lin.weight = nn.Parameter(stack[e].t(), requires_grad=False)
                self.register_buffer(f"stack_{name[:-5]}", stack)
        return self.stack_gate, self.stack_up, self.stack_down

    formulation = "sparse"  # one of FORMULATIONS; set per instance before tracing (onnx_export)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,T,D]
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        out = self.shared_experts(flat).float()
        if self.formulation == "gather":
            return (out + self._gathered(flat)).to(x.dtype).reshape(shape)
        dense_w = self.route(flat)  # [N, E]
        if self.formulation == "dense":  # every expert on every token, weighted by (mostly zero) routing weights
            for e, expert in enumerate(self.experts):
                out = out + expert(flat).float() * dense_w[:, e : e + 1]
            return out.to(x.dtype).reshape(shape)
        for e, expert in enumerate(self.experts):
            tok = torch.nonzero(dense_w[:, e] > 0).squeeze(1)  # [n_e] tokens routed to e
            y = expert(flat.index_select(0, tok)).float() * dense_w.index_select(0, tok)[:, e : e + 1]
            # indices are unique within one expert: gather + add + scatter needs no scatter reduction
            out = out.index_put((tok,), out.index_select(0, tok) + y)
        return out.to(x.dtype).reshape(shape)

    def _gathered(self, flat: torch.Tensor) -> torch.Tensor:
        """flat [N, D] -> routed output [N, D] fp32, reading only the k selected experts per token."""
        logits = F.linear(flat.float(), self.gate.weight.float())  # [N, E]
        return self.routed(flat, logits, *self.stack_experts())


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, i: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe(i) else SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        a, k, v = self.self_attn(self.input_layernorm(x), cos, sin, mask, past_k, past_v)
        h = x + a
        return h + self.mlp(self.post_attention_layernorm(h)), k, v
