"""Building blocks of the Llama-style backbone: RMSNorm, RoPE, SwiGLU and the attention projections.

RMSNorm and the q/k/v head split run as exact custom autograd Functions from `ebt.ops` (EBT training
differentiates every layer twice); the attention patterns themselves are in `models/attention.py`.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt.ops.common import upcast
from ebt.ops.rms_norm import rms_norm
from ebt.ops.rope_heads import complex_viewable, split_heads
from ebt.ops.swiglu import swiglu_gate


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back, with a learnable weight (reference: eps 1e-5)."""

    def __init__(self, dim: int, eps: float = 1e-5, compiled: bool = False):
        super().__init__()
        self.eps = eps
        self.compiled = compiled
        """Run the backward passes as torch.compile'd kernels (ModelConfig.compile_kernels)."""
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # the same arithmetic as a custom Function with a closed-form second derivative (ebt/ops/rms_norm.py): EBT
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
        """With compiled kernels the gate runs as ebt.ops.swiglu.swiglu_gate (one fused kernel per pass)."""

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
    if not complex_viewable(xf):
        xf = xf.contiguous()
    xc = torch.view_as_complex(xf.unflatten(-1, (-1, 2)))          # (B, H, S, hd/2) complex
    rot = torch.complex(cos.to(xf.dtype), sin.to(xf.dtype))        # (S, hd/2)
    return torch.view_as_real(xc * rot).flatten(-2).type_as(x)


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
        # heads split off and q, k rotated by one exact Function pair (ebt.ops.rope_heads): each pass writes every
        # gradient once into place, and contiguous outputs keep the (B, S, 3D) projection out of the graph
        return split_heads(F.linear(x, w), cos, sin, self.heads)

    def out(self, o: Tensor) -> Tensor:
        """(B, H, S, hd) -> (B, S, D)."""
        return self.wo(o.transpose(1, 2).flatten(-2))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation; shift/scale (B, D) broadcast over tokens of x (B, S, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]
