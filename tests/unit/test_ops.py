"""The custom autograd operators of ebt/ops/ against plain autograd: gradcheck, gradgradcheck, finite differences,
third order where claimed, bf16 and the compiled kernels."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from ebt.models.attention import _block_ends, causal_prefix_mask, prediction_attention, query_blocked_attention
from ebt.models.layers import apply_rope, rope_angles
from ebt.ops.prediction_attention import fused_prediction_attention
from ebt.ops.rms_norm import rms_norm
from ebt.ops.rope_heads import split_heads
from ebt.ops.swiglu import swiglu_gate
from ebt.ops.vocab import candidate_cross_entropy, candidate_update, embed_probs
from ebt.text.models import cross_entropy


F64 = torch.float64


def attn_inputs(B=2, H=2, L=4, S=5, d=4, shift=1):
    torch.manual_seed(0)
    q, ks, vs = (torch.randn(B, H, L, d, dtype=F64, requires_grad=True) for _ in range(3))
    k, v = (torch.randn(B, H, S, d, dtype=F64, requires_grad=True) for _ in range(2))
    allowed = torch.arange(S)[None, :] <= torch.arange(L)[:, None] + shift   # a causal prefix per prediction
    return (q, k, v, ks, vs), allowed


def test_fused_attention_gradcheck_and_gradgradcheck():
    ins, allowed = attn_inputs()
    fn = lambda *a: fused_prediction_attention(*a, allowed)  # noqa: E731
    assert gradcheck(fn, ins)
    assert gradgradcheck(fn, ins)


def test_fused_attention_matches_math_to_second_order():
    ins, allowed = attn_inputs(L=5, S=7, shift=2)
    outs = []
    for f in (prediction_attention, fused_prediction_attention):
        o = f(*ins, allowed)
        r = torch.linspace(-1, 1, o.numel(), dtype=F64).reshape(o.shape)
        g = torch.autograd.grad((o * r).sum(), ins, create_graph=True)
        h = torch.autograd.grad(sum((gi * gi).sum() for gi in g), ins)
        outs.append((o, g, h))
    for a, b in zip(outs[0], outs[1]):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_fused_attention_second_derivative_by_central_differences():
    """d/dk_obs of <r, dq> where dq is the input gradient the EBT differentiates (only q needs it)."""
    ins, allowed = attn_inputs()
    q, k, v, ks, vs = ins
    r = torch.randn_like(q)

    def phi(k_):
        o = fused_prediction_attention(q, k_, v, ks, vs, allowed)
        (dq,) = torch.autograd.grad(o.pow(2).sum(), q, create_graph=True)
        return (dq * r).sum()

    (analytic,) = torch.autograd.grad(phi(k), k)
    eps = 1e-6
    for idx in [(0, 0, 1, 2), (1, 1, 4, 0), (0, 1, 0, 3)]:
        kp, km = k.detach().clone(), k.detach().clone()
        kp[idx] += eps
        km[idx] -= eps
        fd = (phi(kp.requires_grad_()) - phi(km.requires_grad_())).item() / (2 * eps)
        assert abs(fd - analytic[idx].item()) < 1e-6 * max(1.0, abs(fd))


def test_fused_attention_skips_observed_grads_only_when_unused(monkeypatch):
    """The candidates' input-gradient pass does not need dk_obs/dv_obs; the outer backward still gets them."""
    from ebt.ops import prediction_attention as attention

    asked = []                                       # need_obs of each input-gradient pass
    apply = attention.PredictionAttentionGrad.apply
    monkeypatch.setattr(attention.PredictionAttentionGrad, "apply", lambda *a: asked.append(a[9]) or apply(*a))
    ins, allowed = attn_inputs()
    q, k, v, ks, vs = ins
    k2, v2 = k * 1.0, v * 1.0                       # non-leaves, like the observed stream's keys/values
    ref = prediction_attention(q, k2, v2, ks, vs, allowed)
    out = fused_prediction_attention(q, k2, v2, ks, vs, allowed)
    grads = []
    for o in (ref, out):
        (dq,) = torch.autograd.grad(o.pow(2).sum(), q, create_graph=True)
        grads.append(torch.autograd.grad(dq.pow(2).sum(), (k, v), retain_graph=True))
    assert asked == [False]                          # the gradient w.r.t. q only: observed grads skipped
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_query_blocked_attention_is_exact_to_second_order():
    """Query blocks against the observed keys each block may see: same output, input gradient and second
    derivative as one call, for blocks that do and do not divide L (and gradgradcheck)."""
    ins, allowed = attn_inputs(L=7, S=9, shift=2)
    for attn in (prediction_attention, fused_prediction_attention):
        outs = []
        for blocks in (1, 2, 3):
            o = query_blocked_attention(attn, blocks, *ins, allowed)
            r = torch.linspace(-1, 1, o.numel(), dtype=F64).reshape(o.shape)
            g = torch.autograd.grad((o * r).sum(), ins, create_graph=True)
            outs.append((o, *g, *torch.autograd.grad(sum((gi * gi).sum() for gi in g), ins)))
        for other in outs[1:]:
            for x, y in zip(outs[0], other):
                torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    small, allowed = attn_inputs()
    assert gradgradcheck(lambda *a: query_blocked_attention(fused_prediction_attention, 2, *a, allowed), small)
    assert allowed._ebt_block_ends[2] == [3, 5]     # rows 0-1 see keys 0..2 (shift 1), rows 2-3 all 5
    # the model's masks carry their offset, so the ends need no read-back; both ways agree
    for L, S, offset, size in ((7, 9, 2, 3), (7, 7, 0, 2), (4, 12, 6, 3), (5, 3, 0, 2)):
        mask = causal_prefix_mask(L, S, offset, "cpu")
        plain = mask.clone()
        assert "_ebt_causal_offset" not in plain.__dict__
        assert torch.equal(mask, torch.arange(S)[None, :] <= torch.arange(L)[:, None] + offset)
        assert _block_ends(mask, size) == _block_ends(plain, size)


def test_rms_norm_is_exact_to_second_order():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, dtype=F64, requires_grad=True)
    w = torch.randn(6, dtype=F64, requires_grad=True)
    fn = lambda a, b: rms_norm(a, b, 1e-5)  # noqa: E731
    assert gradcheck(fn, (x, w)) and gradgradcheck(fn, (x, w))
    plain = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    torch.testing.assert_close(fn(x, w), plain)


def test_swiglu_gate_is_exact_to_second_order():
    """The gate used with compiled kernels: gradcheck/gradgradcheck and autograd's second derivative of silu(a) b."""
    torch.manual_seed(0)
    a, b = (torch.randn(2, 3, 5, dtype=F64, requires_grad=True) for _ in range(2))
    assert gradcheck(swiglu_gate, (a, b)) and gradgradcheck(swiglu_gate, (a, b))
    r = torch.randn(2, 3, 5, dtype=F64)
    seconds = []
    for f in (swiglu_gate, lambda x, y: torch.nn.functional.silu(x) * y):
        ga, gb = torch.autograd.grad((f(a, b) * r).sum(), (a, b), create_graph=True)
        seconds.append(torch.autograd.grad((ga.pow(2) + gb.sin()).sum(), (a, b)))
    for x, y in zip(*seconds):
        torch.testing.assert_close(x, y)


def test_complex_rope_equals_real_rotation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8, dtype=F64)
    cos, sin = rope_angles(torch.arange(5), 8, 1e4)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    expected = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    torch.testing.assert_close(apply_rope(x, cos, sin), expected)
    assert gradgradcheck(lambda t: apply_rope(t, cos, sin).pow(2), (x.requires_grad_(),))


def _plain_heads(y, cos, sin, heads):
    q, k, v = y.unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def test_split_heads_equals_autograd_view_and_rope_to_third_order():
    """The head split + RoPE Function pair: same outputs (contiguous), gradcheck/gradgradcheck, and the third
    derivative equal to autograd's through views and the complex multiply (each pass is the other Function)."""
    torch.manual_seed(0)
    H, y = 3, torch.randn(2, 5, 3 * 3 * 4, dtype=F64, requires_grad=True)
    cos, sin = rope_angles(torch.arange(5), 4, 1e4)
    for a, b in zip(split_heads(y, cos, sin, H), _plain_heads(y, cos, sin, H)):
        torch.testing.assert_close(a, b)
        assert a.is_contiguous()
    f = lambda t: split_heads(t, cos, sin, H)  # noqa: E731
    assert gradcheck(f, (y,)) and gradgradcheck(f, (y,))
    thirds = []
    for fn in (split_heads, _plain_heads):
        q, k, v = fn(y, cos, sin, H)
        (g1,) = torch.autograd.grad((q.pow(2) + q * k).sum(), y, create_graph=True)   # v unused: None adjoint
        (g2,) = torch.autograd.grad(g1.pow(2).sum(), y, create_graph=True)
        thirds.append(torch.autograd.grad(g2.pow(3).sum(), y)[0])
    torch.testing.assert_close(*thirds)
    # adjoints that are transposed (k in q k^T) or expanded (a sum) reach both Functions' backward passes
    for loss in (lambda q, k, v: (q @ k.transpose(-2, -1)).square().sum() + (v @ k.transpose(-2, -1)).sum(),
                 lambda q, k, v: q.sum() + k.sum() + v.sum()):
        grads = []
        for fn in (split_heads, _plain_heads):
            (g1,) = torch.autograd.grad(loss(*fn(y, cos, sin, H)), y, create_graph=True)
            # a transposed adjoint for the merge's backward (when g1 depends on y at all)
            r = torch.linspace(-1, 1, g1.numel(), dtype=F64).reshape(g1.transpose(0, 1).shape)
            g2 = torch.autograd.grad((g1.transpose(0, 1) * r).pow(2).sum(), y) if g1.requires_grad else (None,)
            grads.append((g1, *g2))
        for a, b in zip(*grads):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b)
    yb = y.detach().bfloat16()
    for a, b in zip(split_heads(yb, cos, sin, H), _plain_heads(yb, cos, sin, H)):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a, b)


def vocab_inputs(V=7, D=3):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, V, dtype=F64)
    p = logits.softmax(-1)
    M = torch.randn(V, D, dtype=F64, requires_grad=True)
    dx = torch.randn(2, 3, D, dtype=F64, requires_grad=True)
    return logits, p, M, dx


def test_embed_probs_matches_matmul():
    logits, p, M, _ = vocab_inputs()
    assert gradcheck(lambda m: embed_probs(p, m), (M,))
    r = torch.randn(2, 3, M.shape[1], dtype=F64)
    (a,) = torch.autograd.grad((embed_probs(p, M) * r).sum(), M)
    (b,) = torch.autograd.grad(((p @ M) * r).sum(), M)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("alpha_shape", [(1,), (2, 3, 1), ()])
def test_candidate_update_is_exact(alpha_shape):
    _, p, M, dx = vocab_inputs()
    p = p.clone().requires_grad_(True)
    alpha = (torch.rand(alpha_shape, dtype=F64) + 0.5).requires_grad_(True)
    ins = (p, dx, M, alpha)
    assert gradcheck(candidate_update, ins)
    assert gradgradcheck(candidate_update, ins)
    torch.testing.assert_close(candidate_update(*ins), p - alpha * (dx @ M.t()))


def test_candidate_cross_entropy_matches_f_cross_entropy():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 7, dtype=F64, requires_grad=True)
    y = torch.randint(0, 7, (2, 5))
    y[0, 0] = 0                                               # a pad target (ignored)
    assert gradcheck(lambda t: candidate_cross_entropy(t, y, 0), (z,))
    assert gradgradcheck(lambda t: candidate_cross_entropy(t, y, 0), (z,))
    torch.testing.assert_close(candidate_cross_entropy(z, y, 0), cross_entropy(z, y))


def test_cross_entropy_chunks_rows(monkeypatch):
    """Row-chunked log-sum-exp (large V) gives the unchunked result."""
    from ebt.ops import vocab

    monkeypatch.setattr(vocab, "_CHUNK_ELEMENTS", {"cpu": 14, "cuda": 14})   # two rows of V=7 per chunk
    z = torch.randn(3, 5, 7, dtype=F64, requires_grad=True)
    y = torch.randint(1, 7, (3, 5))
    torch.testing.assert_close(candidate_cross_entropy(z, y, 0), cross_entropy(z, y))
