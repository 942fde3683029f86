"""Benchmark-only baseline: the reference implementation's way of computing the text EBT's energy.

The reference (docs/reference.md §2) runs one sequence [t]? o_0..o_{L-1} p_0..p_{L-1} of 2L(+1) tokens through
every layer at every thinking step, with a dense boolean mask and hand-written (matmul, masked softmax, matmul)
attention, separate q/k/v and w1/w3 matmuls and an RMSNorm written with plain ops, all differentiated twice by
autograd. Nothing is reused across steps. `ReferenceStyleEBT` uses the weights of an ordinary `TextEBT` (same
parameter names) so "new vs old" can be timed in one process on the same model; tests/e2e/test_benchmarks.py checks that
it gives the same loss and gradients as ours.

Load it with `ebt.benchmarks.train_step.load_reference_style()` (it lives outside the package on purpose: nothing in the library
depends on it).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from ebt.text.models import TextEBT
from ebt.models.attention import masked_attention
from ebt.models.layers import apply_rope, modulate


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def _block(layer, h: Tensor, rope: tuple[Tensor, Tensor], allowed: Tensor, cond) -> Tensor:
    """One pre-norm block over the whole (B, S, D) sequence, as the reference computes it."""
    sa, ca, ga, sf, cf, gf = layer.modulation(cond)
    att, ff, heads = layer.attention, layer.feed_forward, layer.attention.heads

    def norm(x, n, shift, scale):
        y = _rms_norm(x, n.weight, n.eps)
        return y if shift is None else modulate(y, shift, scale)

    def gate(x, g):
        return x if g is None else g[:, None] * x

    def split(t):
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    n = norm(h, layer.attention_norm, sa, ca)
    q, k, v = split(att.wq(n)), split(att.wk(n)), split(att.wv(n))
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    h = h + gate(att.wo(masked_attention(q, k, v, allowed).transpose(1, 2).flatten(-2)), ga)
    n = norm(h, layer.ffn_norm, sf, cf)
    return h + gate(ff.w2(F.silu(ff.w1(n)) * ff.w3(n)), gf)


class ReferenceStyleEnergy:
    """E(p, step) for contexts (B, L): the full 2L(+1)-token masked sequence, recomputed on every call."""

    def __init__(self, model, input_ids: Tensor):
        self.model = model          # an AREnergyModel
        self.input_ids = input_ids

    def _layout(self, L: int, c: int, device) -> tuple[Tensor, Tensor]:
        """Positions (S,) and the dense (S, S) mask of docs/reference.md §2 for S = c + 2L."""
        S = c + 2 * L
        idx = torch.arange(S, device=device)
        is_pred = idx >= c + L
        j = torch.where(is_pred, idx - c - L, idx - c)        # observed index / prediction index
        positions = torch.where(is_pred, j + 1 + c, idx)
        a, b = idx[:, None], idx[None, :]
        obs_b = ~is_pred[None, :]
        causal_obs = obs_b & (b <= a) & ~is_pred[:, None]      # t / observed rows: causal over t and observed
        pred_rows = is_pred[:, None] & ((obs_b & (b < c + 1 + j[:, None])) | (a == b))
        return positions, causal_obs | pred_rows

    def __call__(self, probs: Tensor, step: int) -> Tensor:
        em = self.model
        tr = em.transformer
        B, L, _ = probs.shape
        c = em.prefix
        q = em.embed_candidates(probs)
        if em.cfg.conditioning == "pred_embed":
            q = q + tr.time_embeddings.weight[step]
        parts = [em.embeddings(self.input_ids), q]
        if c:
            parts.insert(0, tr.time_embeddings.weight[step].expand(B, 1, -1))
        h = torch.cat(parts, dim=1)                            # (B, c + 2L, D)
        positions, allowed = self._layout(L, c, probs.device)
        rope = tr.rope(positions)
        cond = em._cond(step, B)
        for layer in tr.layers:
            h = _block(layer, h, rope, allowed, cond)
        out = _rms_norm(h[:, -L:], tr.norm.weight, tr.norm.eps)
        e = tr.final_layer(out, cond) if cond is not None else tr.final_layer(out)
        return e.squeeze(-1)


class ReferenceStyleEBT(TextEBT):
    """A TextEBT whose training step computes the energy the reference's way (same parameters, same loss)."""

    def __init__(self, model, think):
        # the reference keeps every step's graph until the backward (no stepwise gradients)
        super().__init__(model, dataclasses.replace(think, stepwise_grad=False))

    def context_energy(self, context: Tensor) -> ReferenceStyleEnergy:
        return ReferenceStyleEnergy(self.energy, context)
