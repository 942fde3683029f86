"""Explicit inference passes of the backbone: plain tensor ops, no autograd tape and no custom Functions.

Inference needs far less than training: the observed stream is only run forward, and thinking needs only the
first-order gradient of each position's energy w.r.t. its embedded candidate, dE/dx. Through the autograd modules
one EBT token cost ~1,900 operator calls at batch 1, each behind autograd's tape and the custom Functions'
wrappers; here (docs/performance.md#inference):
- `observe`: the observed stream's forward for new tokens, written into a preallocated KV cache;
- `energy_and_grad`: the prediction stream's forward, keeping what its backward needs, then the hand-derived
  backward to dE/dx (B, L, D): one fixed sequence of plain ops (~120 calls per layer and step), no graph nodes.

The passes read the modules' weights directly: forward hooks or replaced Linear layers (LoRA, quantised) are not
seen; run such models with `inference_path("autograd")`. The path is a ContextVar: threads started inside
`inference_path` do not inherit it.

Both run on the layer weights as they use them (`models/packing.py`: conditioning, norms and scales folded in),
built once per step index and cached on the model until a weight changes.

Backward formulas (per position; r' = rsqrt(x.x + D eps), n' = x r', the sqrt(D) of RMSNorm being in the weights):
    RMSNorm     dx = r' (dn' - n' (n'.dn'))
    attention   s = q.k_j (q pre-scaled), w = softmax(s), o = sum_j w_j v_j over allowed observed keys and the
                position's own key:  ds = w (do.v_j - sum_j w_j do.v_j);  dq = sum_j ds_j k_j;
                dk_self = ds_self q;  dv_self = w_self do;  RoPE's rotation is undone by its conjugate
    SwiGLU      g = silu(a) b:  da = dg b silu'(a),  db = dg silu(a),  silu'(a) = s (1 + a (1 - s)), s = sigmoid(a)
Equal to autograd's gradient to round-off (tests/unit/test_explicit.py, float64, every conditioning).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt.models.backbone import Observed
from ebt.models.packing import Packed, PackedLayer, rope_table
from ebt.ops.common import upcast
from ebt.ops.rope_heads import complex_viewable

PATHS = ("explicit", "compiled", "autograd")
_PATH: ContextVar[str] = ContextVar("ebt_inference_path", default="explicit")


@contextmanager
def inference_path(path: str) -> Iterator[None]:
    """Inside: how inference runs. explicit (the default): these passes, eagerly; compiled: these passes through
    torch.compile (seconds to compile on first use, then the fewest kernels; needs a C++ compiler on CPU, Triton on
    GPU); autograd: the training modules and the autograd tape, as before the explicit passes existed (side-by-side
    timing and checks)."""
    if path not in PATHS:
        raise ValueError(f"inference path must be one of {PATHS}, got {path!r}")
    token = _PATH.set(path)
    try:
        yield
    finally:
        _PATH.reset(token)


def compiling() -> bool:
    """Whether inference runs under inference_path("compiled")."""
    return _PATH.get() == "compiled"


def enabled_for(t: Tensor) -> bool:
    """Whether the explicit passes may run on t: not under inference_path("autograd"), and no autocast on t's device
    (whose per-op casting rules they do not replicate; weights cast to a half precision work)."""
    return _PATH.get() != "autograd" and not torch.is_autocast_enabled(t.device.type)


_COMPILED: dict = {}
COMPILE_BACKEND = "inductor"
"""torch.compile's backend for the compiled path (the tests trace with "eager": Dynamo without code generation)."""


STATIC_OPTIONS = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}
"""Inductor's settings for static graphs: on CPU, matmuls with one row (batch-1 decoding) become fused element-wise
products and sums rather than library calls (~10 us of dispatch each on a busy CPU); it needs static shapes."""
CPU_STATIC_OPTIONS = {**STATIC_OPTIONS, "cpp_wrapper": True, "size_asserts": False, "alignment_asserts": False}
"""On CPU, a static graph's wrapper is C++ too: a decoding step allocates ~400 intermediate buffers, ~18% of an EBT
token when Python does it (measured side by side, docs/performance.md#inference). Inductor's size and alignment
checks are dropped: Dynamo's guards already check every input's shape and strides, and the fused decoding graphs
call almost no library kernels whose outputs those checks would also cover."""


def compiled_or(fn, static: bool = False, device_type: Optional[str] = None):
    """fn, or its torch.compile'd version under inference_path("compiled") (one per function, backend, kind of
    graph and device type, per process). Shapes are dynamic, so calls on growing lengths do not recompile;
    static=True: fn's shapes never change (a decoding step on static buffers, `text/decoding.py`), so it is
    captured whole as one graph of fixed shapes, with CPU_STATIC_OPTIONS when device_type is "cpu"."""
    if not compiling():
        return fn
    key = (fn, COMPILE_BACKEND, static, device_type)
    if key not in _COMPILED:
        options = None
        if static and COMPILE_BACKEND == "inductor":
            options = CPU_STATIC_OPTIONS if device_type == "cpu" else STATIC_OPTIONS
        _COMPILED[key] = torch.compile(fn, dynamic=not static, fullgraph=static, backend=COMPILE_BACKEND,
                                       options=options)
    return _COMPILED[key]


# ---- the passes -------------------------------------------------------------------------------------------------
def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t in dtype (a no-op call saved when it already is: these passes are overhead-bound at batch 1)."""
    return t if t.dtype == dtype else t.to(dtype)


def _rms(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """RMSNorm without its weight, n = x rsqrt(mean(x^2) + eps) = sqrt(D) n', returned as n' = x r' and
    r' = rsqrt(x.x + D eps) (B, L, 1): the sqrt(D) lives in the packed weights, which saves two kernels per norm.
    Statistics in float32 for half precision."""
    xf = upcast(x)
    r = torch.linalg.vecdot(xf, xf).add_(x.shape[-1] * eps).rsqrt_().unsqueeze(-1)
    return _as(xf * r, x.dtype), r


def _rms_backward(n: Tensor, r: Tensor, dn: Tensor, residual: Tensor) -> Tensor:
    """residual + dn'/dx^T dn = residual + r' (dn - n' (n'.dn)), for n' = x r' of `_rms`."""
    nf, dnf = upcast(n), upcast(dn)
    t = torch.addcmul(dnf, nf, torch.linalg.vecdot(nf, dnf).unsqueeze(-1), value=-1)
    return _as(torch.addcmul(upcast(residual), r, t), residual.dtype)


def _project(x: Tensor, w_t: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x (B, L, in) @ w_t (in, out) + bias -> (B, L, out)."""
    B, L, _ = x.shape
    x2 = x.reshape(B * L, -1)
    y = x2 @ w_t if bias is None else torch.addmm(bias, x2, w_t)
    return y.view(B, L, -1)


def _residual(x: Tensor, h: Tensor, w_t: Tensor) -> Tensor:
    """x + h @ w_t for x (B, L, D), h (B, L, in), w_t (in, D): one addmm."""
    B, L, D = x.shape
    return torch.addmm(x.reshape(B * L, D), h.reshape(B * L, -1), w_t).view(B, L, D)


def _rotate(t: Tensor, rot: Tensor, inverse: bool = False) -> Tensor:
    """Rotate adjacent pairs of t (B, L, n, hd) by the angles of rot (L, 1, hd/2, 2) = (cos, sin) (Llama's
    complex-pair layout); inverse=True rotates back (the transpose, for gradients)."""
    tf = upcast(t)
    if torch.compiler.is_compiling():   # inductor generates no code for complex numbers: the same rotation in reals
        a, b = tf.unflatten(-1, (-1, 2)).unbind(-1)
        c, s = rot.unbind(-1)
        s = -s if inverse else s
        return _as(torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2), t.dtype)
    if not complex_viewable(tf):
        tf = tf.contiguous()
    r = torch.view_as_complex(rot)
    return _as(torch.view_as_real(torch.view_as_complex(tf.unflatten(-1, (-1, 2))) * (r.conj() if inverse else r)
                                  ).flatten(-2), t.dtype)


def observe(layers: list[PackedLayer], heads: int, eps: float, x: Tensor, rot: Tensor,
            kv: list[tuple[Tensor, Tensor]], start: Union[int, Tensor], need_output: bool,
            blocked: Optional[Tensor] = None) -> Tensor:
    """Run new observed tokens x (B, T, D) at positions start..start+T-1 through `layers`, writing their keys and
    values into the caches kv[i] = (K, V), each (B, H, capacity, hd), at those positions (earlier positions hold
    the context). rot: (T, 1, hd/2, 2) rotations of the new positions. Returns the last layer's output (B, T, D)
    when need_output, else the last layer's input (its output is never read by an EBT).

    Static shapes (a compiled decoding step, `text/decoding.py`): start a (1,) long tensor for one token (T = 1)
    and blocked (capacity,) True at the positions after it; attention then runs over the whole buffers."""
    B, T, D = x.shape
    hd = D // heads
    static = isinstance(start, Tensor)
    if not static:
        end = start + T
        # the new tokens see every cached position and, among themselves, causally
        blocked = None if T == 1 else (torch.arange(end, device=x.device)[None, :]
                                       > torch.arange(start, end, device=x.device)[:, None])    # (T, end)
    for i, lay in enumerate(layers):
        n, _ = _rms(x, eps)
        qkv = _project(n, lay.wqkv_t, lay.bqkv).view(B, T, 3 * heads, hd)
        qk = _rotate(qkv.narrow(2, 0, 2 * heads), rot)                                 # (B, T, 2H, hd)
        k_new, v_new = qk.narrow(2, heads, heads).transpose(1, 2), qkv.narrow(2, 2 * heads, heads).transpose(1, 2)
        K, V = kv[i]
        if static:
            K.index_copy_(2, start, k_new)
            V.index_copy_(2, start, v_new)
        else:
            K.narrow(2, start, T).copy_(k_new)
            V.narrow(2, start, T).copy_(v_new)
            K, V = K.narrow(2, 0, end), V.narrow(2, 0, end)                            # (B, H, end, hd)
        if i == len(layers) - 1 and not need_output:
            return x
        q = qk.narrow(2, 0, heads).transpose(1, 2)                                     # (B, H, T, hd), pre-scaled
        if T > 1:   # a prefill: the fused attention kernel, in its causal form on an empty cache
            o = F.scaled_dot_product_attention(q, K, V, attn_mask=None if start == 0 else ~blocked,
                                               is_causal=start == 0, scale=1.0)        # (B, H, T, hd)
        else:
            s = upcast(q @ K.transpose(-2, -1))                                        # (B, H, 1, keys)
            if blocked is not None:
                s = s.masked_fill(blocked, float("-inf"))
            o = _as(s.softmax(-1), x.dtype) @ V                                        # (B, H, 1, hd)
        x = _residual(x, o.transpose(1, 2), lay.wo_t)
        n, _ = _rms(x, eps)
        a, b = _project(n, lay.w13_t, lay.b13).chunk(2, dim=-1)
        x = _residual(x, F.silu(a) * b, lay.w2_t)
    return x


QUERY_BLOCKS = 4
"""Candidate rows of a causal call (L > 1) run in this many blocks, each against only the observed keys its rows may
see: under the causal mask the score tensors of the first blocks are short, and the whole is ~40% smaller."""
MIN_BLOCK = 16
"""No block has fewer rows than this (short calls run whole)."""


def _row_blocks(L: int, S: int, offset: Optional[int], device,
                blocked: Optional[Tensor] = None) -> list[tuple[int, int, int, Optional[Tensor]]]:
    """(first row, end row, visible keys, blocked (rows, keys) mask or None) per block of candidate rows: candidate
    i sees observed keys 0 .. offset + i (offset None: every key not `blocked`)."""
    if offset is None:
        return [(0, L, S, blocked)]
    size = L if L < 2 * MIN_BLOCK else max(MIN_BLOCK, -(-L // QUERY_BLOCKS))
    out = []
    for a in range(0, L, size):
        b = min(L, a + size)
        end = min(S, offset + b)   # row b - 1 sees keys 0 .. offset + b - 1
        blocked = torch.arange(end, device=device)[None, :] > torch.arange(offset + a, offset + b, device=device)[:, None]
        out.append((a, b, end, blocked))                                               # blocked (rows, end)
    return out


def _attend(q: Tensor, k: Tensor, v: Tensor, K: Tensor, V: Tensor, blocked: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Candidate rows q, k, v (B, H, l, hd) over observed K, V (B, H, s, hd) and their own key: the output
    (B, H, l, hd) and the attention weights w (B, H, l, s+1), the own key's last."""
    s_obs = upcast(q @ K.transpose(-2, -1))                                            # (B, H, l, s), q pre-scaled
    if blocked is not None:
        s_obs.masked_fill_(blocked, float("-inf"))   # a fresh tensor (or upcast copy): no second (l, s) one
    s_self = upcast(torch.linalg.vecdot(q, k)).unsqueeze(-1)                           # (B, H, l, 1)
    w = _as(torch.cat([s_obs, s_self], -1).softmax(-1), q.dtype)                         # (B, H, l, s+1)
    S = s_obs.shape[-1]
    return torch.addcmul(w.narrow(-1, 0, S) @ V, w.narrow(-1, S, 1), v), w


def _attend_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, K: Tensor, V: Tensor,
                     w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. the (rotated) q, the own key k and value v of `_attend`, each (B, H, l, hd), given do and
    the output o. The softmax's sum_j w_j (do . v_j) over every key, the own one included, is do . o: no pass over
    the (l, s+1) weights for it, and the observed keys' score gradients are formed in place."""
    S = w.shape[-1] - 1
    w_self = w.narrow(-1, S, 1)                                                        # (B, H, l, 1)
    mean = torch.linalg.vecdot(do, o).unsqueeze(-1)                                    # (B, H, l, 1)
    ds_obs = (do @ V.transpose(-2, -1)).sub_(mean).mul_(w.narrow(-1, 0, S))            # (B, H, l, s) d scores
    ds_self = w_self * (torch.linalg.vecdot(do, v).unsqueeze(-1) - mean)               # (B, H, l, 1)
    return torch.addcmul(ds_obs @ K, ds_self, k), ds_self * q, w_self * do


def _cat(parts: list[Tensor], dim: int) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _span(t: Tensor, a: int, b: int) -> Tensor:
    """t[:, :, a:b] of a (B, H, n, hd) tensor, or t itself when that is all of it (generation: no view op per call)."""
    return t if a == 0 and b == t.shape[2] else t[:, :, a:b]


def energy_and_grad(packed: Packed, x: Tensor, rot: Tensor, kv: list[tuple[Tensor, Tensor]],
                    offset: Optional[int], blocked: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Energies (B, L) of embedded candidates x (B, L, D) and their gradient dE/dx (B, L, D).

    kv[i] = (K, V), each (B, H, S, hd): the observed keys/values; candidate i sees keys 0 .. offset + i (offset None:
    all of them but those `blocked` (S,), the static buffers of a compiled decoding step). rot: (L, 1, hd/2, 2)
    rotations of the candidates' positions.
    """
    B, L, D = x.shape
    H = packed.heads
    hd = D // H
    eps = packed.eps
    blocks = _row_blocks(L, kv[0][0].shape[2], offset, x.device, blocked)
    if packed.add is not None:
        x = x + packed.add
    saved = []
    # ---- forward, keeping what the backward needs ----
    for lay, (K, V) in zip(packed.layers, kv):
        n1, r1 = _rms(x, eps)
        qkv = _project(n1, lay.wqkv_t, lay.bqkv).view(B, L, 3 * H, hd)
        qk = _rotate(qkv.narrow(2, 0, 2 * H), rot)                                     # (B, L, 2H, hd)
        q, k = qk.narrow(2, 0, H).transpose(1, 2), qk.narrow(2, H, H).transpose(1, 2)   # (B, H, L, hd), q pre-scaled
        v = qkv.narrow(2, 2 * H, H).transpose(1, 2)
        outs, ws = [], []
        for a, b, end, mask in blocks:
            o, w = _attend(_span(q, a, b), _span(k, a, b), _span(v, a, b), _span(K, 0, end), _span(V, 0, end), mask)
            outs.append(o)
            ws.append(w)
        x2 = _residual(x, _cat(outs, 2).transpose(1, 2), lay.wo_t)
        n2, r2 = _rms(x2, eps)
        a_, b_ = _project(n2, lay.w13_t, lay.b13).chunk(2, dim=-1)                      # (B, L, F) each
        sig = torch.sigmoid(a_)
        sa = a_ * sig                                                                   # silu(a)
        x = _residual(x2, sa * b_, lay.w2_t)
        saved.append((n1, r1, q, k, v, outs, ws, n2, r2, b_, sig, sa))
    nf, rf = _rms(x, eps)
    e = nf @ packed.final                                                               # (B, L)
    if packed.final_bias is not None:
        e = e + packed.final_bias
    # ---- backward: dE/dx for E summed over positions (each position's energy depends on its own candidate only) --
    dx = _rms_backward(nf, rf, packed.final.expand_as(nf), torch.zeros_like(x))
    for lay, (K, V), (n1, r1, q, k, v, outs, ws, n2, r2, b_, sig, sa) in zip(
            reversed(packed.layers), reversed(kv), reversed(saved)):
        # SwiGLU branch: x_out = x2 + W2 (silu(a) b), [a; b] = W13 n2' + b13
        dg = dx @ lay.w2                                                                # (B, L, F)
        dsilu = torch.addcmul(sig, sa, 1 - sig)                                         # silu'(a) = s + a s (1 - s)
        dn2 = torch.cat([dg * b_ * dsilu, dg * sa], -1) @ lay.w13                       # (B, L, D)
        dx = _rms_backward(n2, r2, dn2, dx)                                             # d x2
        # attention branch: x2 = x + Wo o
        do = (dx @ lay.wo).view(B, L, H, hd).transpose(1, 2)                            # (B, H, L, hd)
        grads = [_attend_backward(_span(do, a, b), _span(q, a, b), _span(k, a, b), _span(v, a, b), o,
                                  _span(K, 0, end), _span(V, 0, end), w)
                 for (a, b, end, _), o, w in zip(blocks, outs, ws)]
        dq, dk, dv = (_cat(list(g), 2) for g in zip(*grads))                            # (B, H, L, hd) each
        dqk = torch.cat([dq, dk], 1).transpose(1, 2)                                    # (B, L, 2H, hd), rotated
        dqkv = torch.cat([_rotate(dqk, rot, inverse=True), dv.transpose(1, 2)], 2)      # (B, L, 3H, hd)
        dn1 = dqkv.view(B, L, 3 * D) @ lay.wqkv                                         # (B, L, D)
        dx = _rms_backward(n1, r1, dn1, dx)
    return e, dx


# ---- entry points used by the models ----------------------------------------------------------------------------
def can_extend(past: Optional[Observed], x: Tensor) -> bool:
    """Whether new observed tokens x (B, T, D) can be appended to `past` by `extend`: the explicit passes are enabled,
    no gradient is asked for (training differentiates through the modules), and the preallocated cache has room."""
    return (past is not None and past.buffers is not None and enabled_for(x) and not torch.is_grad_enabled()
            and past.length + x.shape[1] <= past.buffers[0][0].shape[2])


def extend(module: nn.Module, layers: list[PackedLayer], x: Tensor, past: Observed, cfg,
           final_norm: Optional[Tensor] = None) -> Observed:
    """`Backbone.observe(x, past=past)` by the explicit forward: x (B, T, D) appended to the preallocated cache.
    final_norm (D,): also return the normalised final states (`Observed.hidden`, the Transformer++'s)."""
    start, T = past.length, x.shape[1]
    rot = rope_table(module, start + T, cfg.dim // cfg.heads, cfg.rope_theta, x)[start:start + T]
    out = compiled_or(observe)(layers, cfg.heads, cfg.norm_eps, x, rot, past.buffers, start,
                               need_output=final_norm is not None)
    kv = [(K.narrow(2, 0, start + T), V.narrow(2, 0, start + T)) for K, V in past.buffers]
    hidden = None if final_norm is None else normalised(out, cfg.norm_eps, final_norm)
    return Observed(kv, hidden, past.buffers)


def normalised(x: Tensor, eps: float, norm_weight: Tensor) -> Tensor:
    """RMSNorm(x) with weight norm_weight (D,): the Transformer++'s final states from the last layer's output."""
    return _rms(x, eps)[0] * (norm_weight * x.shape[-1] ** 0.5)
