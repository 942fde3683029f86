"""RMSNorm as a pair of custom autograd Functions with hand-written first and second derivatives.

Why: EBT training runs every op three times (forward, input gradient with create_graph, backward of that
gradient). Autograd builds the second-order graph of RMSNorm out of many small element-wise
kernels (pow, mean, rsqrt, their derivatives and the derivatives of those), which on a CPU cost about as much
as a linear layer of the same width. Here the forward is a Function whose backward calls a second Function
(the first derivative) whose backward is the closed-form second derivative. Nothing of size (N, D) is
saved beyond the inputs; the normalised input is recomputed. Checked with float64 gradcheck / gradgradcheck
(tests/test_perf_kernels.py). Third-order derivatives are not supported (`once_differentiable`).

RMSNorm, per row of width D: r = (x.x / D + eps)^-1/2, n = r x, y = n * w.
  first derivative for output adjoint g:  h = g * w, mu = h.n / D,  gx = r (h - mu n),  gw = sum_rows g * n
  second derivative for adjoints (Xb, Wb) of (gx, gw), with xi = Xb.n and u = Wb * g:
    grad g = w * (r Xb - (r xi / D) n) + Wb * n
    grad w = sum_rows g * (r Xb - (r xi / D) n)
    grad x = r (u - (u.n / D) n) + (r^2 / D) (3 mu xi n - (Xb.h) n - xi h) - r^2 mu Xb
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["rms_norm", "swiglu_gate", "split_heads", "kernel", "upcast"]


def upcast(x: Tensor) -> Tensor:
    """float32 for half-precision tensors (numerically sensitive ops), unchanged otherwise (keeps float64 exact)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _rows_sum(t: Tensor) -> Tensor:
    """Sum over every dimension but the last: (..., D) -> (D,)."""
    return t.reshape(-1, t.shape[-1]).sum(0)


def _rms(xf: Tensor, eps: float) -> Tensor:
    """r = rsqrt(mean(x^2) + eps), (..., 1)."""
    return torch.rsqrt(torch.linalg.vecdot(xf, xf).div_(xf.shape[-1]).add_(eps))[..., None]


def kernel(fn, compiled: bool):
    """`fn` itself, or (compiled=True) its torch.compile'd version, built on first use and shared by all callers.

    Only pure tensor functions that run outside autograd (the bodies of these Functions) are compiled, which
    sidesteps compile's lack of double-backward support: inductor fuses their element-wise chains into a few
    kernels. Needs a C++ compiler on CPU (Triton on GPU) and costs seconds of compilation on first use."""
    if not compiled:
        return fn
    if fn not in _COMPILED:
        # default shape handling: kernels specialised to the first (training) shapes, a dynamic version only once a
        # second shape appears. dynamic=True tunes every launch configuration for whichever shape comes first and
        # reuses it for all others (pytorch/pytorch#197842), e.g. tiny test shapes' configs for a real batch
        _COMPILED[fn] = torch.compile(fn)
    return _COMPILED[fn]


_COMPILED: dict = {}


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, eps, compiled):
        xf = upcast(x)
        r = _rms(xf, eps)
        ctx.save_for_backward(x, w, r)
        ctx.compiled = compiled
        return (xf * r).to(x.dtype) * w        # normalised in float32, cast, then weighted (as layers.RMSNorm)

    @staticmethod
    def backward(ctx, g):
        x, w, r = ctx.saved_tensors
        if torch.is_grad_enabled():
            gx, gw = _RMSNormGrad.apply(g, x, w, r, ctx.compiled)
        else:
            gx, gw = kernel(_rms_grad, ctx.compiled)(g, x, w, r)
        return gx, gw, None, None


def _rms_grad(g, x, w, r):
    xf, gf = upcast(x), upcast(g)
    n = xf * r
    gw = _rows_sum(gf * n).to(w.dtype)
    h = gf * w
    mu = torch.linalg.vecdot(h, n)[..., None].div_(x.shape[-1])
    gx = h.sub_(n.mul_(mu)).mul_(r)            # r (h - mu n), reusing the buffers
    return gx.to(x.dtype), gw


def _rms_second(g, x, w, r, Xb, Wb):
    """Gradients w.r.t. (g, x, w) of <Xb, gx> + <Wb, gw> (module docstring); Xb or Wb may be None."""
    xf, gf = upcast(x), upcast(g)
    D = x.shape[-1]
    n = xf * r
    grad_g = grad_w = grad_x = None
    if Xb is not None:
        Xb = upcast(Xb)
        h = gf * w
        mu = torch.linalg.vecdot(h, n)[..., None] / D
        xi = torch.linalg.vecdot(Xb, n)[..., None]
        q = r * Xb - (r * xi / D) * n                              # shared by grad g and grad w
        grad_g = q * w
        grad_w = _rows_sum(gf * q)
        xh = torch.linalg.vecdot(Xb, h)[..., None]
        r2 = r * r
        grad_x = (r2 / D) * ((3 * mu * xi - xh) * n - xi * h) - (r2 * mu) * Xb
    if Wb is not None:
        Wb = upcast(Wb)
        u = Wb * gf
        un = torch.linalg.vecdot(u, n)[..., None] / D
        part = r * (u - un * n)
        grad_x = part if grad_x is None else grad_x + part
        grad_g = Wb * n if grad_g is None else grad_g + Wb * n
    cast = lambda t, ref: None if t is None else t.to(ref.dtype)  # noqa: E731
    return cast(grad_g, g), cast(grad_x, x), cast(grad_w, w)


class _RMSNormGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, x, w, r, compiled):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(g, x, w, r)
        ctx.compiled = compiled
        return kernel(_rms_grad, compiled)(g, x, w, r)

    @staticmethod
    @once_differentiable
    def backward(ctx, Xb, Wb):
        g, x, w, r = ctx.saved_tensors
        return (*kernel(_rms_second, ctx.compiled)(g, x, w, r, Xb, Wb), None, None)


def rms_norm(x: Tensor, weight: Tensor, eps: float, compiled: bool = False) -> Tensor:
    """(x / rms(x)) * weight over the last dimension; equal to `layers.RMSNorm` to round-off. compiled=True runs
    the backward passes as torch.compile'd kernels (see `kernel`)."""
    return _RMSNorm.apply(x, weight, eps, compiled)


# ---- the SwiGLU gate silu(a) * b, the same way (used with compiled kernels) ------------------------------------------
# With s = sigmoid(a): silu = a s, silu' = s (1 + a (1 - s)) =: d1, silu'' = s (1 - s) (2 + a (1 - 2 s)) =: d2.
#   first derivative for output adjoint g:  ga = g b d1,  gb = g silu
#   second derivative for adjoints (A, Bb) of (ga, gb):
#     grad g = A b d1 + Bb silu,  grad a = g (A b d2 + Bb d1),  grad b = A g d1
# Eager, autograd's own graph of F.silu(a) * b was measured faster on CPU (8.9 vs 6.4 ms), so this pair is only
# used when the kernels are compiled, where each pass becomes one fused kernel.

def _silu_parts(af: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sigmoid(af)
    return s, af * s, s * (1 + af * (1 - s))


def _gate(a, b):
    return (torch.nn.functional.silu(upcast(a)) * upcast(b)).to(a.dtype)


def _gate_grad(g, a, b):
    af, bf, gf = upcast(a), upcast(b), upcast(g)
    _, silu, d1 = _silu_parts(af)
    return (gf * bf * d1).to(a.dtype), (gf * silu).to(b.dtype)


def _gate_second(g, a, b, A, Bb):
    af, bf, gf = upcast(a), upcast(b), upcast(g)
    s, silu, d1 = _silu_parts(af)
    grad_g = grad_a = grad_b = None
    if A is not None:
        Af = upcast(A)
        d2 = s * (1 - s) * (2 + af * (1 - 2 * s))
        grad_g = Af * bf * d1
        grad_a = Af * gf * bf * d2
        grad_b = Af * gf * d1
    if Bb is not None:
        Bf = upcast(Bb)
        grad_g = Bf * silu if grad_g is None else grad_g + Bf * silu
        grad_a = Bf * gf * d1 if grad_a is None else grad_a + Bf * gf * d1
    cast = lambda t, ref: None if t is None else t.to(ref.dtype)  # noqa: E731
    return cast(grad_g, g), cast(grad_a, a), cast(grad_b, b)


class _SwiGLUGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, compiled):
        ctx.save_for_backward(a, b)
        ctx.compiled = compiled
        return kernel(_gate, compiled)(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        if torch.is_grad_enabled():
            ga, gb = _SwiGLUGateGrad.apply(g, a, b, ctx.compiled)
        else:
            ga, gb = kernel(_gate_grad, ctx.compiled)(g, a, b)
        return ga, gb, None


class _SwiGLUGateGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, a, b, compiled):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(g, a, b)
        ctx.compiled = compiled
        return kernel(_gate_grad, compiled)(g, a, b)

    @staticmethod
    @once_differentiable
    def backward(ctx, A, Bb):
        return (*kernel(_gate_second, ctx.compiled)(*ctx.saved_tensors, A, Bb), None)


def swiglu_gate(a: Tensor, b: Tensor, compiled: bool = False) -> Tensor:
    """silu(a) * b with hand-written first and second derivatives (exact; float32 arithmetic for half inputs)."""
    return _SwiGLUGate.apply(a, b, compiled)


# ---- the head split of a fused q/k/v projection, with RoPE on q and k ------------------------------------------
# Both directions are linear maps, each the adjoint of the other (a rotation's adjoint is the inverse rotation), so
# each Function's backward is the other Function: differentiable to any order, and every pass is one rotation per
# rotated tensor written straight into its destination. Autograd's graph of view/permute/unbind plus a complex
# multiply instead copies each gradient twice (stack, then a contiguous reshape) and clones the complex views.

def _complex_viewable(t: Tensor) -> bool:
    """Whether view_as_complex accepts t's adjacent pairs: unit last stride, even other strides and offset."""
    return t.stride(-1) == 1 and all(s % 2 == 0 for s in t.stride()[:-1]) and t.storage_offset() % 2 == 0


def _rotate_into(out: Tensor, x: Tensor, rot: Tensor) -> None:
    """out[...] = x rotated pairwise by rot (complex, broadcast over x (..., hd/2) pairs); out and x (..., hd) may be
    strided views. Half-precision inputs are rotated in float32 and cast (as layers.apply_rope)."""
    xf = upcast(x)
    if not _complex_viewable(xf):   # e.g. a transposed or expanded incoming gradient
        xf = xf.contiguous()
    xc = torch.view_as_complex(xf.unflatten(-1, (-1, 2)))
    if out.dtype == xf.dtype and _complex_viewable(out):
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
