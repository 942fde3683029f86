"""Exact attention of the prediction stream as two custom autograd Functions (`attn_impl="fused"`).

EBT training differentiates the gradient of the energy, so each attention call runs three passes: the forward,
the input gradient (built with create_graph) and the backward of that gradient. Written with plain ops (the
"math" path, `models.attention.prediction_attention`) autograd keeps the scores, the softmax output and the softmax-backward
intermediates of the first two passes, 4-5 tensors of (B, H, L, S+1) per layer and step, and pays for zero-filled
slice gradients, masked fills and broadcasts in every pass. Here:

- `PredictionAttention`: (q, k_obs, v_obs, k_self, v_self) -> (o, P, p_self), where P (B, H, L, S) and p_self
  (B, H, L) are the attention probabilities over the allowed observed keys and the self key. P is the only
  L x S tensor kept, shared by both Functions. Its backward applies the softmax Jacobian once to the sum of the
  first-order term and of whatever the second Function sends back to P (one pair of matmuls for dq, dk).
- `PredictionAttentionGrad`: (dO, P, p_self, q, k_obs, v_obs, k_self, v_self) -> (dq, dk_obs, dv_obs, dk_self,
  dv_self), the attention gradient, with P as an *input*: its hand-written backward returns dPhi/dP and leaves the
  softmax Jacobian to the first Function.
- the observed keys/values get no gradient in the candidates' input-gradient pass, which never needs them.

Second derivative (per query row; the self key is one more column j; c = 1/sqrt(hd)). The gradient pass computes
dP_j = dO.v_j, delta = sum_j P_j dP_j, dS = P (dP - delta), dq = c sum_j dS_j k_j, dk_j = c dS_j q, dv_j = P_j dO.
For adjoints (Qb, Kb, Vb) of (dq, dk, dv): Phi = sum_j dS_j a_j + sum_j P_j b_j with a_j = c (Qb.k_j + Kb_j.q),
b_j = dO.Vb_j. Holding P as an independent input, with abar = sum_j P_j a_j and D = dP - delta:
    dPhi/dP_j  = D_j (a_j - abar) + b_j - delta abar   (the row constant is dropped: the softmax Jacobian removes it)
    dPhi/ddP_j = P_j (a_j - abar) = tau_j  -> grad dO = sum_j tau_j v_j + P_j Vb_j,  grad v_j = tau_j dO
    dPhi/da_j  = dS_j                      -> grad q = c sum_j dS_j Kb_j,  grad k_j = c dS_j Qb
Checked against the math path with float64 gradcheck / gradgradcheck and finite differences
(tests/unit/test_ops.py).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ebt.ops.common import kernel, upcast

__all__ = ["fused_prediction_attention"]


def _node(t: Tensor):
    return torch.autograd.graph.get_gradient_edge(t).node if t.requires_grad else None


def _will_run(node) -> bool:
    """Whether the running backward pass uses a gradient flowing into `node` (True when it cannot be asked)."""
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except RuntimeError:  # leaves under autograd.grad() cannot be asked
        return True


def _dot(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """Row dot products sum(a * b, -1) in `dtype`: (..., n) x (..., n) -> (...)."""
    return torch.linalg.vecdot(a.to(dtype), b.to(dtype))


def _mm(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """a @ b computed in the dtype of b's inputs (bf16 matmuls stay bf16, as in the math path), returned in dtype."""
    return torch.matmul(a.to(b.dtype), b).to(dtype)


def _attention_forward(q, k_obs, v_obs, k_self, v_self, allowed, c: float):
    """(o, P, p_self): the output (B, H, L, hd) and the probabilities over observed keys and the self key."""
    s = upcast(torch.matmul(q, k_obs.transpose(-2, -1)))              # (B, H, L, S) scores, float32 for half inputs
    w = s.dtype
    s.mul_(c).masked_fill_(~allowed, float("-inf"))
    t = _dot(q, k_self, w) * c                                         # (B, H, L) self scores
    # torch.softmax over [observed, self] (the self key is always allowed, so no row is empty): its fused kernel
    # is several times faster than amax / exp / sum / div, whose exp slows down on widely spread scores
    probs = torch.softmax(torch.cat([s, t[..., None]], dim=-1), dim=-1)   # (B, H, L, S + 1)
    P, p_self = probs[..., :-1], probs[..., -1]
    o = _mm(P, v_obs, v_obs.dtype) + p_self[..., None].to(v_self.dtype) * v_self
    return o, P, p_self


class PredictionAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k_obs, v_obs, k_self, v_self, allowed, compiled):
        ctx.set_materialize_grads(False)
        c = 1.0 / math.sqrt(q.shape[-1])
        o, P, p_self = kernel(_attention_forward, compiled)(q, k_obs, v_obs, k_self, v_self, allowed, c)
        ctx.save_for_backward(q, k_obs, v_obs, k_self, v_self, P, p_self)
        ctx.scale, ctx.compiled, ctx.obs_nodes = c, compiled, (_node(k_obs), _node(v_obs))
        return o, P, p_self

    @staticmethod
    def backward(ctx, dO, gP, gp_self):
        q, k_obs, v_obs, k_self, v_self, P, p_self = ctx.saved_tensors
        need_obs = any(_will_run(n) for n in ctx.obs_nodes)
        if torch.is_grad_enabled():  # create_graph: the input gradient itself must be differentiable
            if gP is not None or gp_self is not None:
                raise RuntimeError("third-order derivatives through the fused prediction attention are not "
                                   "supported: use model.attn_impl=math")
            grads = PredictionAttentionGrad.apply(dO, P, p_self, q, k_obs, v_obs, k_self, v_self, ctx.scale,
                                                  need_obs, ctx.compiled)
            return (*grads, None, None)
        grads = kernel(_softmax_backward, ctx.compiled)(dO, gP, gp_self, q, k_obs, v_obs, k_self, v_self, P,
                                                        p_self, ctx.scale, need_obs)
        return (*grads, None, None)


def _softmax_backward(dO, gP, gp_self, q, k_obs, v_obs, k_self, v_self, P, p_self, c, need_obs):
    """Gradients of the forward w.r.t. its inputs for adjoints dO of o and (gP, gp_self) of (P, p_self)."""
    w = P.dtype
    dS = torch.zeros_like(P) if dO is None else _mm(dO, v_obs.transpose(-2, -1), w)   # dL/dP (B, H, L, S)
    d_self = torch.zeros_like(p_self) if dO is None else _dot(dO, v_self, w)
    if gP is not None:
        dS += gP
    if gp_self is not None:
        d_self = d_self + gp_self
    delta = torch.linalg.vecdot(P, dS) + p_self * d_self             # softmax Jacobian over S + 1 columns
    dS.sub_(delta[..., None]).mul_(P)
    ds_self = (p_self * (d_self - delta) * c)[..., None]
    dS_mm = dS.to(k_obs.dtype)                                         # cast once for both products below
    dq = _mm(dS_mm, k_obs, q.dtype).mul_(c) + ds_self.to(q.dtype) * k_self
    dk_self = ds_self.to(q.dtype) * q
    dv_self = None if dO is None else p_self[..., None].to(dO.dtype) * dO
    dk_obs = dv_obs = None
    if need_obs:
        dk_obs = _mm(dS_mm.transpose(-2, -1), q.to(k_obs.dtype), k_obs.dtype).mul_(c)
        dv_obs = None if dO is None else _mm(P.transpose(-2, -1), dO, v_obs.dtype)
    return dq, dk_obs, dv_obs, dk_self, dv_self


class PredictionAttentionGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dO, P, p_self, q, k_obs, v_obs, k_self, v_self, c, need_obs, compiled):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(dO, P, p_self, q, k_obs, v_obs, k_self, v_self)
        ctx.scale, ctx.compiled = c, compiled
        return kernel(_softmax_backward, compiled)(dO, None, None, q, k_obs, v_obs, k_self, v_self, P, p_self, c,
                                                   need_obs)

    @staticmethod
    @once_differentiable
    def backward(ctx, gq, gk_obs, gv_obs, gk_self, gv_self):
        return (*kernel(_attention_second, ctx.compiled)(*ctx.saved_tensors, ctx.scale, gq, gk_obs, gv_obs, gk_self,
                                                         gv_self), None, None, None)


def _attention_second(dO, P, p_self, q, k_obs, v_obs, k_self, v_self, c, gq, gk_obs, gv_obs, gk_self, gv_self):
    """Gradients w.r.t. (dO, P, p_self, q, k_obs, v_obs, k_self, v_self) of the gradient pass's outputs against
    adjoints (gq, gk_obs, gv_obs, gk_self, gv_self), any of which may be None (module docstring)."""
    w = P.dtype
    f = lambda t: None if t is None else t.to(w)                   # noqa: E731  (float32 for half inputs)
    dOw, qw, kw, vw, ksw, vsw = f(dO), f(q), f(k_obs), f(v_obs), f(k_self), f(v_self)
    gq, gk_obs, gv_obs, gk_self, gv_self = f(gq), f(gk_obs), f(gv_obs), f(gk_self), f(gv_self)
    D = torch.matmul(dOw, vw.transpose(-2, -1))                   # dP (B, H, L, S), recomputed
    D_self = _dot(dOw, vsw, w)
    delta = torch.linalg.vecdot(P, D) + p_self * D_self
    D.sub_(delta[..., None])                                       # D = dP - delta
    D_self = D_self - delta
    zero = torch.zeros_like(p_self)
    # a = c (Qb.k_j + Kb_j.q), per observed key and for the self key
    a = torch.zeros_like(P) if gq is None else torch.matmul(gq * c, kw.transpose(-2, -1))
    if gk_obs is not None:
        a.add_(torch.matmul(qw * c, gk_obs.transpose(-2, -1)))
    a_self = c * ((zero if gq is None else _dot(gq, ksw, w)) + (zero if gk_self is None else _dot(gk_self, qw, w)))
    abar = torch.linalg.vecdot(P, a) + p_self * a_self
    a.sub_(abar[..., None])
    a_self = a_self - abar
    gP = D * a                                                     # dPhi/dP = D (a - abar) + b
    gp_self = D_self * a_self
    if gv_obs is not None:
        gP.add_(torch.matmul(dOw, gv_obs.transpose(-2, -1)))
    if gv_self is not None:
        gp_self = gp_self + _dot(dOw, gv_self, w)
    tau = a.mul_(P)                                                # P (a - abar)
    tau_self = (p_self * a_self)[..., None]
    g_dO = torch.matmul(tau, vw) + tau_self * vsw
    if gv_obs is not None:
        g_dO += torch.matmul(P, gv_obs)
    if gv_self is not None:
        g_dO += p_self[..., None] * gv_self
    g_v = torch.matmul(tau.transpose(-2, -1), dOw)
    g_vs = tau_self * dOw
    dS = D.mul_(P)                                                 # dPhi/da = dS = P (dP - delta)
    dS_self = (p_self * D_self * c)[..., None]
    g_q = torch.zeros_like(qw) if gk_obs is None else torch.matmul(dS, gk_obs).mul_(c)
    if gk_self is not None:
        g_q += dS_self * gk_self
    if gq is not None:
        g_k, g_ks = torch.matmul(dS.transpose(-2, -1), gq).mul_(c), dS_self * gq
    else:
        g_k, g_ks = torch.zeros_like(kw), torch.zeros_like(ksw)
    cast = lambda g, ref: g.to(ref.dtype)                          # noqa: E731
    return (cast(g_dO, dO), gP, gp_self, cast(g_q, q), cast(g_k, k_obs), cast(g_v, v_obs), cast(g_ks, k_self),
            cast(g_vs, v_self))


def fused_prediction_attention(q: Tensor, k_obs: Tensor, v_obs: Tensor, k_self: Tensor, v_self: Tensor,
                               allowed: Tensor, compiled: bool = False) -> Tensor:
    """Same contract and result as `models.attention.prediction_attention`: q, k_self, v_self (B, H, L, hd); k_obs, v_obs
    (B, H, S, hd); allowed (L, S) bool (every row also attends to its own key) -> (B, H, L, hd).
    compiled=True runs the kernels through torch.compile (ebt.ops.common.kernel)."""
    return PredictionAttention.apply(q, k_obs, v_obs, k_self, v_self, allowed, compiled)[0]
