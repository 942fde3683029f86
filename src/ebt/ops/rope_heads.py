"""The head split of a fused q/k/v projection, with RoPE on q and k, as an exact pair of autograd Functions.

Both directions are linear maps, each the adjoint of the other (a rotation's adjoint is the inverse rotation), so
each Function's backward is the other Function: differentiable to any order, and every pass is one rotation per
rotated tensor written straight into its destination. Autograd's graph of view/permute/unbind plus a complex
multiply instead copies each gradient twice (stack, then a contiguous reshape) and clones the complex views.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ebt.ops.common import upcast

__all__ = ["split_heads", "complex_viewable"]


def complex_viewable(t: Tensor) -> bool:
    """Whether view_as_complex accepts t's adjacent pairs: unit last stride, even other strides and offset."""
    return t.stride(-1) == 1 and all(s % 2 == 0 for s in t.stride()[:-1]) and t.storage_offset() % 2 == 0


def _rotate_into(out: Tensor, x: Tensor, rot: Tensor) -> None:
    """out[...] = x rotated pairwise by rot (complex, broadcast over x (..., hd/2) pairs); out and x (..., hd) may be
    strided views. Half-precision inputs are rotated in float32 and cast (as layers.apply_rope)."""
    xf = upcast(x)
    if not complex_viewable(xf):   # e.g. a transposed or expanded incoming gradient
        xf = xf.contiguous()
    xc = torch.view_as_complex(xf.unflatten(-1, (-1, 2)))
    if out.dtype == xf.dtype and complex_viewable(out):
        torch.mul(xc, rot, out=torch.view_as_complex(out.unflatten(-1, (-1, 2))))
    else:
        out.copy_(torch.view_as_real(xc * rot).flatten(-2))


def _slots(y: Tensor, heads: int) -> list[Tensor]:
    """y (B, S, 3D) -> three (B, H, S, hd) views of its q, k and v parts."""
    return list(y.unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4).unbind(0))


class _SplitHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, rot, heads):
        ctx.set_materialize_grads(False)
        ctx.rot, ctx.heads = rot, heads
        sq, sk, sv = _slots(y, heads)
        q = torch.empty_like(sq, memory_format=torch.contiguous_format)
        k = torch.empty_like(sk, memory_format=torch.contiguous_format)
        _rotate_into(q, sq, rot)
        _rotate_into(k, sk, rot)
        return q, k, sv.clone(memory_format=torch.contiguous_format)   # never a view of y (B = S = 1 slices are)

    @staticmethod
    def backward(ctx, gq, gk, gv):
        if gq is None and gk is None and gv is None:
            return None, None, None
        return _MergeHeads.apply(gq, gk, gv, ctx.rot, ctx.heads), None, None


class _MergeHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gq, gk, gv, rot, heads):
        ctx.set_materialize_grads(False)
        ctx.rot, ctx.heads = rot, heads
        ref = next(t for t in (gq, gk, gv) if t is not None)            # (B, H, S, hd); one at least (backward)
        B, H, S, hd = ref.shape
        g = ref.new_empty(B, S, 3 * H * hd)
        sq, sk, sv = _slots(g, heads)
        for slot, t, r in ((sq, gq, rot.conj()), (sk, gk, rot.conj()), (sv, gv, None)):
            if t is None:
                slot.zero_()
            elif r is None:
                slot.copy_(t)
            else:
                _rotate_into(slot, t, r)
        return g

    @staticmethod
    def backward(ctx, g):
        if g is None:
            return None, None, None, None, None
        grads = _SplitHeads.apply(g, ctx.rot, ctx.heads)
        return (*(t if need else None for t, need in zip(grads, ctx.needs_input_grad)), None, None)


def split_heads(y: Tensor, cos: Tensor, sin: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """y (B, S, 3D) from a fused q/k/v projection -> q, k rotated by RoPE (cos/sin (S, hd/2), adjacent pairs as in
    `layers.apply_rope`) and v, each (B, H, S, hd) contiguous; exact derivatives of any order."""
    dt = torch.float64 if y.dtype == torch.float64 else torch.float32
    rot = torch.complex(cos.to(dt), sin.to(dt))                         # (S, hd/2)
    return _SplitHeads.apply(y, rot, heads)

