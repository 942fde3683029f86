"""RMSNorm as a pair of custom autograd Functions with hand-written first and second derivatives.

Why: EBT training runs every op three times (forward, input gradient with create_graph, backward of that
gradient). Autograd builds the second-order graph of RMSNorm out of many small element-wise
kernels (pow, mean, rsqrt, their derivatives and the derivatives of those), which on a CPU cost about as much
as a linear layer of the same width. Here the forward is a Function whose backward calls a second Function
(the first derivative) whose backward is the closed-form second derivative. Nothing of size (N, D) is
saved beyond the inputs; the normalised input is recomputed. Checked with float64 gradcheck / gradgradcheck
(tests/unit/test_ops.py). Third-order derivatives are not supported (`once_differentiable`).

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

from ebt.ops.common import cast_like, kernel, upcast

__all__ = ["rms_norm"]


def _rows_sum(t: Tensor) -> Tensor:
    """Sum over every dimension but the last: (..., D) -> (D,)."""
    return t.reshape(-1, t.shape[-1]).sum(0)


def _rms(xf: Tensor, eps: float) -> Tensor:
    """r = rsqrt(mean(x^2) + eps), (..., 1)."""
    return torch.rsqrt(torch.linalg.vecdot(xf, xf).div_(xf.shape[-1]).add_(eps))[..., None]




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
    return cast_like(grad_g, g), cast_like(grad_x, x), cast_like(grad_w, w)


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

