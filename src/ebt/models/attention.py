"""Attention patterns of the two token streams (the projections live in `layers.Attention`).

- `observed_attention`: the context stream, through PyTorch's fused SDPA kernels (differentiated once only);
- `prediction_attention`: the candidate stream over allowed context keys plus its own key, with plain
  differentiable ops (autograd differentiates it twice; `model.attn_impl=math`); `ebt.ops.prediction_attention`
  is the same attention as exact custom Functions (`fused`, the default);
- `query_blocked_attention`: either of those over blocks of query rows, each against only the keys it may see;
- `masked_attention`: the plain (2L)x(2L)-style masked attention (reference-style benchmark and tests).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ebt.ops.common import upcast

__all__ = ["masked_attention", "observed_attention", "prediction_attention", "causal_prefix_mask",
           "query_blocked_attention"]


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
    by the outer backward (docs/reference.md §9; tests/unit/test_gradients.py checks the training loss by finite differences).
    causal=True: the square causal mask of a stream without a KV cache; else `allowed` (Sq, Sk) bool is the mask.
    """
    if causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def prediction_attention(q: Tensor, k_obs: Tensor, v_obs: Tensor, k_self: Tensor, v_self: Tensor,
                         allowed: Tensor) -> Tensor:
    """Attention of prediction tokens over observed keys plus their own key (docs/reference.md §2).

    Prediction i attends to the observed keys where allowed[i] is True and to itself, never to other predictions.
    q, k_self, v_self (B, H, L, hd); k_obs, v_obs (B, H, S, hd); allowed (L, S) bool -> (B, H, L, hd).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    obs_scores = (q @ k_obs.transpose(-2, -1)) * scale            # (B, H, L, S)
    self_scores = (q * k_self).sum(-1, keepdim=True) * scale       # (B, H, L, 1)
    scores = torch.cat([upcast(obs_scores).masked_fill(~allowed, float("-inf")), upcast(self_scores)], dim=-1)
    weights = scores.softmax(-1).type_as(v_obs)                    # (B, H, L, S+1)
    return weights[..., :-1] @ v_obs + weights[..., -1:] * v_self


def causal_prefix_mask(L: int, S: int, offset: int, device) -> Tensor:
    """allowed (L, S): prediction row i may see observed keys 0 .. offset + i. The offset is recorded on the mask so
    that query blocks know each block's last key without reading the mask back from the device."""
    allowed = torch.arange(S, device=device)[None, :] <= torch.arange(offset, offset + L, device=device)[:, None]
    allowed.__dict__["_ebt_causal_offset"] = offset
    return allowed


def _block_ends(allowed: Tensor, size: int) -> list[int]:
    """For row blocks [a, a + size) of `allowed` (L, S): one past the last observed key any row of the block may
    see (at least 1). From the recorded offset of a `causal_prefix_mask`; for any other mask read back once (one
    host sync) and kept on the mask."""
    L, S = allowed.shape
    offset = allowed.__dict__.get("_ebt_causal_offset")
    if offset is not None:
        return [max(1, min(S, offset + min(L, a + size))) for a in range(0, L, size)]
    cache = allowed.__dict__.setdefault("_ebt_block_ends", {})
    if size not in cache:
        cols = torch.arange(1, S + 1, device=allowed.device)
        last = (allowed * cols).amax(1).tolist()                              # (L,) one past each row's last key
        cache[size] = [max(1, max(last[a:a + size])) for a in range(0, L, size)]
    return cache[size]


def query_blocked_attention(attn, blocks: int, q: Tensor, k_obs: Tensor, v_obs: Tensor, k_self: Tensor,
                            v_self: Tensor, allowed: Tensor) -> Tensor:
    """`attn` (ops.fused_prediction_attention or prediction_attention) over `blocks` blocks of prediction rows,
    each against only the observed keys its rows may attend to: under a causal mask the first block skips most of
    the L x S scores, probabilities and their derivatives. Exact (each block is the same attention on a slice)."""
    L, S = q.shape[2], k_obs.shape[2]
    if allowed.shape != (L, S):
        raise ValueError(f"allowed must be (L, S) = ({L}, {S}), got {tuple(allowed.shape)}")
    size = -(-L // blocks)
    if blocks <= 1 or L <= size or S == 0:
        return attn(q, k_obs, v_obs, k_self, v_self, allowed)
    outs = []
    for a, end, qb, kb, vb in zip(range(0, L, size), _block_ends(allowed, size), q.split(size, 2),
                                  k_self.split(size, 2), v_self.split(size, 2)):
        outs.append(attn(qb, k_obs[:, :, :end], v_obs[:, :, :end], kb, vb, allowed[a:a + size, :end]))
    return torch.cat(outs, 2)                                                 # (B, H, L, hd)
