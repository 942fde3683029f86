"""Exact custom autograd Functions for the text EBT's (B, L, V) candidate tensors.

At V = 50k the candidate tensors dominate memory: each (B, L, V) float32 tensor at batch 32, context 256 is
1.6 GB, and the plain formulation keeps several per thinking step (the probabilities as a leaf and in the
embedding matmul, the energy gradient for the step size's gradient, the cross-entropy's log-probabilities, and
the probabilities' own .grad, which the outer backward computes although nothing reads it). With the update
z' = p - alpha dE/dp and the candidate embedding x = p M (M = vocab_to_embed.weight^T, or the input embeddings
with prob_embed), dE/dp = (dE/dx) M^T, so the thinking loop differentiates the energy w.r.t. the (B, L, D)
embedding only and these Functions handle the vocabulary side:

- `embed_probs(p, M)`: x = p M for constant candidates p, which then need no gradient and get no .grad (the
  plain form computes and stores one (B, L, V) gradient per step that nothing reads). It keeps p for M's
  gradient; recomputing p = softmax(logits) chunk by chunk instead was measured 6% slower per training step at
  V = 8192, and with stepwise gradients p is only kept for its own step;
- `candidate_update(p, dx, M, alpha)`: z' = p - alpha (dx M^T), never storing dE/dp; its backward needs only
  dz' M (B, L, D): grad dx = -alpha dz' M, grad M = -(alpha dz')^T dx, grad alpha = -sum(dz' M . dx);
- `candidate_cross_entropy(z, targets)`: mean cross-entropy over non-pad targets that saves z (kept by the
  caller) and the row log-sum-exp instead of a (B, L, V) log-softmax.

The backward formulas are written with differentiable ops. Gradients are checked with float64 gradcheck /
gradgradcheck and against the plain formulation in tests/unit/test_ops.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ebt.ops.common import kernel, upcast

__all__ = ["embed_probs", "candidate_update", "candidate_cross_entropy", "vocab_logits", "padded_vocab"]


_CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 24}
"""Row chunks for (rows, V) temporaries. CPU: about 8 MB, since large fresh CPU allocations are mapped and
page-faulted anew each time (a (32 MB) temporary costs as much as several element-wise passes) while small ones
are reused. CUDA: about 64 MB, enough to keep kernel launches few (8 MB chunks at V = 50k meant 200 chunks of
three kernels each) while no full (B, L, V) temporary is formed."""


def _row_chunks(t: Tensor, vocab: int) -> list[Tensor]:
    """(..., n) -> views of the flattened rows in chunks of about _CHUNK_ELEMENTS[device] / vocab rows."""
    per_chunk = _CHUNK_ELEMENTS["cpu" if t.device.type == "cpu" else "cuda"]
    return list(t.reshape(-1, t.shape[-1]).split(max(1, per_chunk // vocab)))


def padded_vocab(vocab: int, device: torch.device) -> int:
    """The vocabulary width the (rows, V) matmuls run at. cuBLAS falls back to slow kernels (an sm_75 CUTLASS
    kernel, ~4x slower on an H100) when a bf16 operand's leading dimension is not a multiple of 8 elements, as
    with V = 50,277; on CUDA the vocabulary side is zero-padded to a multiple of 64 (like nanoGPT's 50,304),
    which changes no result. On CPU the padding would only cost a copy."""
    return vocab if device.type != "cuda" or vocab % 64 == 0 else (vocab + 63) // 64 * 64


def _pad_cast(t: Tensor, dim: int, width: int, dtype: torch.dtype) -> Tensor:
    """t cast to dtype with dimension `dim` zero-padded to `width`, contiguous; t itself when nothing changes."""
    if t.shape[dim] == width:
        return t.to(dtype)
    shape = list(t.shape)
    shape[dim] = width
    out = t.new_empty(shape, dtype=dtype)
    out.narrow(dim, 0, t.shape[dim]).copy_(t)
    out.narrow(dim, t.shape[dim], width - t.shape[dim]).zero_()
    return out


def vocab_logits(h: Tensor, weight: Tensor) -> Tensor:
    """h (..., D) @ weight (V, D)^T -> logits (..., V), the output head of the Transformer++; differentiable by
    autograd. The matmul runs at the padded width of `padded_vocab` (the padded logits are sliced away)."""
    width = padded_vocab(weight.shape[0], h.device)
    if width == weight.shape[0]:
        return torch.nn.functional.linear(h, weight)
    w = torch.nn.functional.pad(weight, (0, 0, 0, width - weight.shape[0]))
    return torch.nn.functional.linear(h, w)[..., :weight.shape[0]]


def _mm_dtype(a: Tensor, b: Tensor) -> torch.dtype:
    """The matmul dtype autocast would pick for a @ b (bf16/fp16 under autocast, else their promoted dtype); custom
    Functions' backward passes do not run under autocast, so they need it recorded."""
    dev = a.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(a.dtype, b.dtype)


class _EmbedProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p, M):
        dt, width = _mm_dtype(p, M), padded_vocab(M.shape[0], M.device)
        pp = _pad_cast(p, -1, width, dt)                              # (B, L, V'): the matmul's operand, kept
        ctx.save_for_backward(pp)                                     # (in bf16 under autocast: half of p's bytes)
        ctx.dt, ctx.vocab, ctx.m_dtype = dt, M.shape[0], M.dtype
        return torch.matmul(pp, _pad_cast(M, 0, width, dt))          # (B, L, D)

    @staticmethod
    def backward(ctx, dx):
        (pp,) = ctx.saved_tensors
        dM = None
        if ctx.needs_input_grad[1]:                                   # p^T dx; p itself needs no gradient
            dM = torch.matmul(pp.flatten(0, -2).transpose(0, 1), dx.to(ctx.dt).flatten(0, -2))
            dM = dM[:ctx.vocab].to(ctx.m_dtype)
        return None, dM


def embed_probs(p: Tensor, M: Tensor) -> Tensor:
    """x = p @ M for constant candidates p (B, L, V) (no gradient, no .grad), M (V, D) -> (B, L, D)."""
    if p.requires_grad:
        raise ValueError("embed_probs is for constant candidates; differentiate through p @ M instead")
    return _EmbedProbs.apply(p, M)


class _CandidateUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p, dx, M, alpha):
        dt, V = _mm_dtype(dx, M), M.shape[0]
        width = padded_vocab(V, M.device)
        Mp = _pad_cast(M, 0, width, dt)                               # (V', D)
        g = torch.matmul(dx.to(dt), Mp.transpose(0, 1))               # dE/dp (B, L, V'), never saved
        if width == V and g.dtype == p.dtype:
            z = g.mul_(-alpha).add_(p)                                # in g's buffer
        else:
            z = torch.addcmul(p, g[..., :V], -alpha)                 # one pass, in p's dtype
        ctx.save_for_backward(dx, M, alpha)   # M, not Mp: the backward must stay differentiable w.r.t. M
        ctx.dt, ctx.vocab, ctx.m_dtype = dt, V, M.dtype
        return z

    @staticmethod
    def backward(ctx, dz):
        dx, M, alpha = ctx.saved_tensors
        dt = ctx.dt
        Mp = _pad_cast(M, 0, padded_vocab(M.shape[0], M.device), dt)
        dzp = _pad_cast(dz, -1, Mp.shape[0], dt)                      # (B, L, V')
        t = torch.matmul(dzp, Mp).to(dx.dtype)                        # dz M (B, L, D) = dz . dE/dp per dx entry
        d_dx = -alpha.to(t.dtype) * t if ctx.needs_input_grad[1] else None
        dM = d_alpha = None
        if ctx.needs_input_grad[2]:
            scaled = _pad_cast(dz * alpha, -1, Mp.shape[0], dt) if alpha.numel() > 1 else dzp
            dM = -torch.matmul(scaled.flatten(0, -2).transpose(0, 1), dx.to(dt).flatten(0, -2))
            dM = dM[:ctx.vocab].to(ctx.m_dtype)
            if alpha.numel() == 1:
                dM = dM * alpha.to(dM.dtype)
        if ctx.needs_input_grad[3]:
            d_alpha = (-(t.to(alpha.dtype) * dx.to(alpha.dtype)).sum(-1, keepdim=True)).sum_to_size(alpha.shape)
        return (dz if ctx.needs_input_grad[0] else None), d_dx, dM, d_alpha


def candidate_update(p: Tensor, dx: Tensor, M: Tensor, alpha: Tensor) -> Tensor:
    """z' = p - alpha * (dx @ M^T): the thinking update with dE/dp = dE/dx @ M^T; p (B, L, V), dx (B, L, D),
    M (V, D), alpha a scalar tensor or (B, L, 1)."""
    return _CandidateUpdate.apply(p, dx, M, alpha)


def _ce_loss(zf: Tensor, targets: Tensor, keep: Tensor, n: Tensor, chunked: bool) -> Tensor:
    tgt = targets.clamp_min(0)[..., None]                               # (B, L, 1)
    if chunked:
        # eager: row chunks through the fused log-softmax kernel, one read and one chunk-sized write per row;
        # torch.logsumexp's exp of (z - max) runs several times slower once thinking has spread the logits over
        # thousands (measured on CPU)
        pairs = zip(_row_chunks(zf, zf.shape[-1]), _row_chunks(tgt, zf.shape[-1]))
        nll = -torch.cat([torch.log_softmax(c, -1).gather(-1, t) for c, t in pairs]).view(zf.shape[:-1])   # (B, L)
    else:  # compiled: one fused reduction
        nll = torch.logsumexp(zf, -1) - zf.gather(-1, tgt).squeeze(-1)
    return (nll * keep).sum() / n


def _ce_grad(zf: Tensor, targets: Tensor, keep: Tensor, n: Tensor, dl: Tensor) -> Tensor:
    """d loss / dz = (softmax(z) - onehot(target)) * keep * dl / n, in one (B, L, V) buffer."""
    scale = (keep.to(zf.dtype) * (dl / n))[..., None]                 # (B, L, 1)
    dz = torch.softmax(zf, -1).mul_(scale)
    return dz.scatter_add_(-1, targets.clamp_min(0)[..., None], -scale)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, targets, ignore_index, compiled):
        zf = upcast(z)
        keep = targets != ignore_index                                # (B, L)
        n = keep.sum().clamp_min(1)
        loss = kernel(_ce_loss, compiled)(zf, targets, keep, n, not compiled)
        ctx.save_for_backward(z, targets, keep, n)
        ctx.compiled = compiled
        return loss

    @staticmethod
    def backward(ctx, dl):
        z, targets, keep, n = ctx.saved_tensors
        zf = upcast(z)
        if torch.is_grad_enabled():  # create_graph: stay differentiable, out of place
            scale = (keep.to(zf.dtype) * (dl / n))[..., None]
            dz = torch.softmax(zf, -1) * scale
            return dz.scatter_add(-1, targets.clamp_min(0)[..., None], -scale).to(z.dtype), None, None, None
        return kernel(_ce_grad, ctx.compiled)(zf, targets, keep, n, dl).to(z.dtype), None, None, None


def candidate_cross_entropy(z: Tensor, targets: Tensor, ignore_index: int = 0, compiled: bool = False) -> Tensor:
    """Mean cross-entropy of logits z (B, L, V) over targets (B, L) != ignore_index; keeps z, not log-softmax.
    compiled=True runs forward and backward as torch.compile'd kernels (ebt.ops.common.kernel)."""
    return _CrossEntropy.apply(z, targets, ignore_index, compiled)
