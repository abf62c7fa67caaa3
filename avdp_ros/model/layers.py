"""Transformer pieces shared by the video model and the action policies, and the `Normalizer`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]  # (keys, values), each (B, n_head, L, head_dim)


def patchify(x: Tensor, p: int) -> Tensor:
    """(..., C, h, w) -> (..., (h/p)*(w/p), C*p*p), patches in row-major order.

    Written with an explicit non-negative permutation: the ONNX exporter copies negative axes
    (e.g. of movedim) into Transpose's `perm` as they are, which onnx.checker rejects.
    """
    *lead, c, h, w = x.shape
    n = len(lead)
    x = x.reshape(*lead, c, h // p, p, w // p, p)
    x = x.permute(*range(n), n + 1, n + 3, n + 2, n + 4, n)  # (..., h/p, w/p, p, p, C)
    return x.reshape(*lead, (h // p) * (w // p), p * p * c)


def unpatchify(x: Tensor, p: int, c: int, h: int, w: int) -> Tensor:
    """Inverse of `patchify`: (..., N, C*p*p) -> (..., C, h, w)."""
    lead = x.shape[:-2]
    n = len(lead)
    x = x.reshape(*lead, h // p, w // p, p, p, c)
    x = x.permute(*range(n), n + 4, n, n + 2, n + 1, n + 3)  # (..., C, h/p, p, w/p, p)
    return x.reshape(*lead, c, h, w)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of flow times t in [0, 1] (scaled by 1000 like DiT's integer steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[..., None] * freqs  # (..., half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb  # (..., dim) float32


class TimestepEmbedder(nn.Module):
    def __init__(self, n_embd: int, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, n_embd), nn.SiLU(), nn.Linear(n_embd, n_embd))

    def forward(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)  # (..., n_embd)


class MLP(nn.Module):
    def __init__(self, n_embd: int, mlp_ratio: float):
        super().__init__()
        hidden = int(n_embd * mlp_ratio)
        self.fc = nn.Linear(n_embd, hidden)
        self.proj = nn.Linear(hidden, n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Attention(nn.Module):
    """Multi-head self-attention with an optional explicit mask and optional past keys/values."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: Tensor, mask: Tensor | None = None, past: KV | None = None) -> tuple[Tensor, KV]:
        """
        Args:
            x: (B, L, D) query tokens.
            mask: (L, P + L) bool, True = may attend; None = attend to everything.
            past: cached (keys, values) of P earlier tokens, placed before this call's own.
        Returns:
            (output (B, L, D), this call's own (keys, values) for a cache to append).
        """
        B, L, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)
        q, k, v = (z.view(B, L, self.n_head, D // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, nh, L, hs)
        k_all, v_all = (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)) if past else (k, v)
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # (B, nh, L, hs)
        return self.proj(y.transpose(1, 2).reshape(B, L, D)), (k, v)


class CrossAttention(nn.Module):
    """Queries from x, keys/values from a conditioning sequence."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.q = nn.Linear(n_embd, n_embd)
        self.kv = nn.Linear(n_embd, 2 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: Tensor, ctx: Tensor) -> Tensor:
        B, L, D = x.shape
        S = ctx.shape[1]
        hs = D // self.n_head
        q = self.q(x).view(B, L, self.n_head, hs).transpose(1, 2)  # (B, nh, L, hs)
        k, v = (z.view(B, S, self.n_head, hs).transpose(1, 2) for z in self.kv(ctx).split(D, dim=-1))  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, L, hs)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class EncoderBlock(nn.Module):
    """Pre-norm bidirectional transformer block."""

    def __init__(self, n_embd: int, n_head: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(n_embd)
        self.attn = Attention(n_embd, n_head)
        self.norm2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))[0]
        return x + self.mlp(self.norm2(x))


class Normalizer(nn.Module):
    """Per-dimension affine normaliser whose statistics are buffers (saved in the state dict)."""

    def __init__(self, dim: int, min_std: float = 1e-3):
        super().__init__()
        self.min_std = min_std
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: Tensor) -> Normalizer:
        """Set mean/std from data (..., dim); std is clamped to `min_std` so constant dims stay finite."""
        flat = x.reshape(-1, x.shape[-1]).to(self.mean)  # stats live on the buffers' device and dtype
        if len(flat) == 0:
            raise ValueError(f"Normalizer.fit: no rows of dim {x.shape[-1]} to fit (NaN statistics otherwise)")
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0, unbiased=False).clamp(min=self.min_std))
        return self

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def unnormalize(self, x: Tensor) -> Tensor:
        return x * self.std.to(x.dtype) + self.mean.to(x.dtype)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift."""
    return x * (1 + scale) + shift


def init_weights(module: nn.Module) -> None:
    """GPT-2 style init for Linear/Embedding (apply with `module.apply`); zero-inits are done after."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
