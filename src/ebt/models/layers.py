"""Building blocks of the Llama-style backbone: RMSNorm, RoPE, SwiGLU and exact attention.

The prediction (candidate) attention is written with plain differentiable ops (matmul, masked softmax) so that
it supports double backward: PyTorch's fused SDPA kernels do not (DESIGN.md), and EBT training differentiates
the gradient of the energy. The observed (context) stream is only differentiated once, so `observed_attention`
uses SDPA; `masked_attention` is its plain-ops equivalent (reference-style benchmark and tests).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt.models.fused_ops import _complex_viewable, rms_norm, split_heads, swiglu_gate, upcast


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back, with a learnable weight (reference: eps 1e-5)."""

    def __init__(self, dim: int, eps: float = 1e-5, compiled: bool = False):
        super().__init__()
        self.eps = eps
        self.compiled = compiled
        """Run the backward passes as torch.compile'd kernels (ModelConfig.compile_kernels)."""
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # the same arithmetic as a custom Function with a closed-form second derivative (fused_ops.py): EBT
        # training differentiates it twice, and autograd's generic double backward of it is many small kernels
        return rms_norm(x, self.weight, self.eps, self.compiled)


class SwiGLU(nn.Module):
    """W2(silu(W1 x) * W3 x), no biases."""

    def __init__(self, dim: int, hidden: int, compiled: bool = False):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.compiled = compiled
        """With compiled kernels the gate runs as fused_ops.swiglu_gate (one fused kernel per pass)."""

    def forward(self, x: Tensor) -> Tensor:
        # w1 and w3 as one matmul (see Attention.qkv)
        a, b = F.linear(x, fused_weight(self, self.w1.weight, self.w3.weight)).chunk(2, dim=-1)
        return self.w2(swiglu_gate(a, b, True) if self.compiled else F.silu(a) * b)


def rope_angles(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables for integer `positions` (S,) -> two (S, head_dim/2) float32 tensors."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).double() / head_dim)
    angles = positions.double()[:, None] * freqs[None, :]  # (S, hd/2), in float64 then cast by the caller
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x (B, H, S, hd) — the Llama complex-pair layout.

    One complex multiply (as the reference does): each of forward, backward and double backward is a single
    kernel, where the real-arithmetic form (select, 4 muls, stack) costs ~10 kernels and zero-filled select
    gradients per pass. view_as_complex needs even strides, which head views of a (B, S, D) projection have.
    """
    xf = upcast(x)
    if not _complex_viewable(xf):
        xf = xf.contiguous()
    xc = torch.view_as_complex(xf.unflatten(-1, (-1, 2)))          # (B, H, S, hd/2) complex
    rot = torch.complex(cos.to(xf.dtype), sin.to(xf.dtype))        # (S, hd/2)
    return torch.view_as_real(xc * rot).flatten(-2).type_as(x)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(hd) masked) v with the softmax in float32; supports double backward.

    q (B, H, Sq, hd), k/v (B, H, Sk, hd), allowed (Sq, Sk) bool -> (B, H, Sq, hd).
    """
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    scores = upcast(scores).masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1).type_as(v)) @ v


def observed_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, causal: bool) -> Tensor:
    """Attention of the observed (context) stream through PyTorch's fused SDPA kernels (flash on CPU and GPU).

    The fused kernels have no double backward, and none is needed here: the thinking gradient is taken w.r.t. the
    candidates, whose path never enters the observed stream, so the observed stream is only differentiated once,
    by the outer backward (DESIGN.md; tests/test_gradients.py checks the training loss by finite differences).
    causal=True: the square causal mask of a stream without a KV cache; else `allowed` (Sq, Sk) bool is the mask.
    """
    if causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def prediction_attention(q: Tensor, k_obs: Tensor, v_obs: Tensor, k_self: Tensor, v_self: Tensor,
                         allowed: Tensor) -> Tensor:
    """Attention of prediction tokens over observed keys plus their own key (REFERENCE_SPEC §1.3).

    Prediction i attends to the observed keys where allowed[i] is True and to itself, never to other predictions.
    q, k_self, v_self (B, H, L, hd); k_obs, v_obs (B, H, S, hd); allowed (L, S) bool -> (B, H, L, hd).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    obs_scores = (q @ k_obs.transpose(-2, -1)) * scale            # (B, H, L, S)
    self_scores = (q * k_self).sum(-1, keepdim=True) * scale       # (B, H, L, 1)
    scores = torch.cat([upcast(obs_scores).masked_fill(~allowed, float("-inf")), upcast(self_scores)], dim=-1)
    weights = scores.softmax(-1).type_as(v_obs)                    # (B, H, L, S+1)
    return weights[..., :-1] @ v_obs + weights[..., -1:] * v_self


_FROZEN_WEIGHTS: ContextVar[bool] = ContextVar("ebt_frozen_weights", default=False)


@contextmanager
def frozen_weights() -> Iterator[None]:
    """Inside: no gradient w.r.t. the weights will be asked for (inference thinking differentiates the energy w.r.t.
    the candidates only), so the fused projections reuse one detached concatenation of their weights instead of
    concatenating them at every call."""
    token = _FROZEN_WEIGHTS.set(True)
    try:
        yield
    finally:
        _FROZEN_WEIGHTS.reset(token)


def fused_weight(module: nn.Module, *weights: Tensor) -> Tensor:
    """torch.cat(weights) along the output dimension; under `frozen_weights` a cached, detached copy that is rebuilt
    whenever a weight changes (in-place updates bump its version counter, moves change its storage)."""
    if not _FROZEN_WEIGHTS.get():
        return torch.cat(weights)
    key = tuple((w.data_ptr(), w._version) for w in weights)
    cached = module.__dict__.get("_fused_weight_cache")
    if cached is None or cached[0] != key:
        cached = (key, torch.cat([w.detach() for w in weights]))
        module.__dict__["_fused_weight_cache"] = cached   # not a parameter or buffer: never in checkpoints
    return cached[1]


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
        """x (B, S, D) -> q, k (rotated), v, each (B, H, S, hd).

        One matmul against the concatenated weights instead of three (fewer, larger kernels in every pass of the
        double backward); the parameters stay separate so checkpoints keep the reference's names.
        """
        w = fused_weight(self, self.wq.weight, self.wk.weight, self.wv.weight)     # (3D, D)
        # heads split off and q, k rotated by one exact Function pair (fused_ops.split_heads): each pass writes every
        # gradient once into place, and contiguous outputs keep the (B, S, 3D) projection out of the graph
        return split_heads(F.linear(x, w), cos, sin, self.heads)

    def out(self, o: Tensor) -> Tensor:
        """(B, H, S, hd) -> (B, S, D)."""
        return self.wo(o.transpose(1, 2).flatten(-2))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation; shift/scale (B, D) broadcast over tokens of x (B, S, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]
