"""Building blocks of the Llama-style backbone: RMSNorm, RoPE, SwiGLU and exact attention.

All attention here is written with plain differentiable ops (matmul, masked softmax) so that it supports
double backward: PyTorch's fused SDPA kernels do not (DESIGN.md), and EBT training differentiates the
gradient of the energy.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back, with a learnable weight (reference: eps 1e-5)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class SwiGLU(nn.Module):
    """W2(silu(W1 x) * W3 x), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def rope_angles(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables for integer `positions` (S,) -> two (S, head_dim/2) float32 tensors."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[:, None] * freqs[None, :]  # (S, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x (B, H, S, hd) — the Llama complex-pair layout."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, H, S, hd/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(hd) masked) v with the softmax in float32; supports double backward.

    q (B, H, Sq, hd), k/v (B, H, Sk, hd), allowed (Sq, Sk) bool -> (B, H, Sq, hd).
    """
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    scores = scores.float().masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1).type_as(v)) @ v


def prediction_attention(q: Tensor, k_obs: Tensor, v_obs: Tensor, k_self: Tensor, v_self: Tensor,
                         allowed: Tensor) -> Tensor:
    """Attention of prediction tokens over observed keys plus their own key (REFERENCE_SPEC §1.3).

    Prediction i attends to the observed keys where allowed[i] is True and to itself, never to other predictions.
    q, k_self, v_self (B, H, L, hd); k_obs, v_obs (B, H, S, hd); allowed (L, S) bool -> (B, H, L, hd).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    obs_scores = (q @ k_obs.transpose(-2, -1)) * scale            # (B, H, L, S)
    self_scores = (q * k_self).sum(-1, keepdim=True) * scale       # (B, H, L, 1)
    scores = torch.cat([obs_scores.float().masked_fill(~allowed, float("-inf")), self_scores.float()], dim=-1)
    weights = scores.softmax(-1).type_as(v_obs)                    # (B, H, L, S+1)
    return weights[..., :-1] @ v_obs + weights[..., -1:] * v_self


class Attention(nn.Module):
    """Multi-head attention projections (no GQA, no biases); the attention pattern is chosen by the caller."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, S, D) -> q, k (rotated), v, each (B, H, S, hd)."""
        def split(t: Tensor) -> Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q, k, v = split(self.wq(x)), split(self.wk(x)), split(self.wv(x))
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, o: Tensor) -> Tensor:
        """(B, H, S, hd) -> (B, S, D)."""
        return self.wo(o.transpose(1, 2).flatten(-2))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation; shift/scale (B, D) broadcast over tokens of x (B, S, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]
