"""The two-stream energy equals the dense (2L)x(2L) masked formulation of REFERENCE_SPEC §1.3; causality;
the KV cache reproduces uncached computation."""
import pytest
import torch

from ebt.config import ModelConfig, ThinkConfig
from ebt.text.generation import SampleOptions, decode, generate
from ebt.text.inference import build_cache, think
from ebt.thinking import ThinkOptions
from ebt.text.models import TextEBT, TextTransformer
from ebt.models.ar_ebt import ContextEnergy
from ebt.models.attention import masked_attention

CONDITIONINGS = ["time_embed", "none", "adaln", "adaln_zero", "pred_embed"]


def make(conditioning, dtype=torch.float64, vocab=13, ctx=6):
    torch.manual_seed(0)
    m = TextEBT(ModelConfig(vocab_size=vocab, dim=16, layers=2, heads=2, context=ctx, conditioning=conditioning),
                ThinkConfig(landscapes=2, alpha=2.0)).to(dtype)
    if conditioning == "adaln_zero":  # make the zero-initialised layers non-trivial for the comparison
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return m


def dense_energy(model: TextEBT, x: torch.Tensor, probs: torch.Tensor, step: int) -> torch.Tensor:
    """Reference-style: one (2L[+1])-token sequence with a boolean mask and explicit positions."""
    em = model.energy
    tr = em.transformer
    B, L = x.shape
    c = em.prefix
    q = em.embed_candidates(probs)
    if em.cfg.conditioning == "pred_embed":
        q = q + tr.time_embeddings.weight[step]
    parts = [em.embeddings(x), q]
    if c:
        parts.insert(0, tr.time_embeddings.weight[step].expand(B, 1, -1))
    h = torch.cat(parts, 1)
    S = h.shape[1]
    pos = torch.cat([torch.arange(L + c), torch.arange(L) + 1 + c])
    kind = ["t"] * c + ["o"] * L + ["p"] * L
    idx = list(range(c)) + list(range(L)) + list(range(L))
    allowed = torch.zeros(S, S, dtype=torch.bool)
    for a in range(S):
        for b in range(S):
            if kind[a] in "to":
                allowed[a, b] = kind[b] in "to" and b <= a
            else:  # prediction i: step token, observed 0..i, itself
                allowed[a, b] = kind[b] == "t" or (kind[b] == "o" and idx[b] <= idx[a]) or a == b
    cond = em._cond(step, B)
    rope = tr.rope(pos)
    for layer in tr.layers:
        sa, ca, ga, sf, cf, gf = layer.modulation(cond)
        qq, kk, vv = layer.attention.qkv(layer._norm(layer.attention_norm, h, sa, ca), *rope)
        h = h + layer._gate(layer.attention.out(masked_attention(qq, kk, vv, allowed)), ga)
        h = layer._ffn(h, layer.modulation(cond))
    out = tr.norm(h[:, -L:])
    e = tr.final_layer(out, cond) if cond is not None else tr.final_layer(out)
    return e.squeeze(-1)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_two_stream_equals_dense_mask(conditioning):
    model = make(conditioning)
    x = torch.randint(1, 13, (2, 6))
    probs = torch.rand(2, 6, 13, dtype=torch.float64).softmax(-1)
    for step in (0, 1):
        ours = ContextEnergy(model.energy, x)(probs, step)
        ref = dense_energy(model, x, probs, step)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("conditioning", ["time_embed", "none"])
def test_energy_is_causal_and_per_position(conditioning):
    model = make(conditioning)
    x = torch.randint(1, 13, (1, 6))
    probs = torch.rand(1, 6, 13, dtype=torch.float64).softmax(-1)
    base = ContextEnergy(model.energy, x)(probs, 0)
    i = 2
    x2 = x.clone()
    x2[0, i + 1:] = (x2[0, i + 1:] % 12) + 1                      # change the future context
    p2 = probs.clone()
    p2[0, torch.arange(6) != i] = torch.rand(5, 13, dtype=torch.float64).softmax(-1)  # change other candidates
    other = ContextEnergy(model.energy, x2)(p2, 0)
    torch.testing.assert_close(other[0, i], base[0, i])
    assert not torch.allclose(other[0, i + 1:], base[0, i + 1:])


@pytest.mark.parametrize("conditioning", ["time_embed", "none", "adaln"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kv_cache_matches_uncached_logits(conditioning, dtype):
    """Same logits with and without the cache: <= 1e-5 relative (norm) in float32, round-off only in float64."""
    model = make(conditioning, dtype=dtype, ctx=12).eval()
    prompt = torch.randint(1, 13, (1, 4))
    opts = ThinkOptions(steps=2)
    runs = []
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(0)
        steps = list(decode(model, prompt, 6, opts, use_cache, lambda lg: lg.argmax(-1), gen))
        runs.append(torch.stack([s.logits for s in steps]))
    rel = ((runs[0] - runs[1]).norm() / runs[1].norm()).item()
    assert rel <= (1e-5 if dtype == torch.float32 else 1e-12), rel


@pytest.mark.parametrize("conditioning", ["time_embed", "none"])
def test_cached_position_matches_full_sequence_prediction(conditioning):
    """Thinking at one position through the cache equals that position of a whole-sequence descent."""
    model = make(conditioning)
    model.think_cfg.init_std = 0.0  # z0 = 0 so both runs start from the same point
    x = torch.randint(1, 13, (2, 6))
    full = think(model, x)
    for pos in (0, 3, 5):
        cached = think(model, x, obs=build_cache(model, x), start=pos, length=1)
        torch.testing.assert_close(cached.logits[:, 0], full.logits[:, pos], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(cached.final_energy[:, 0], full.final_energy[:, pos], rtol=1e-10, atol=1e-10)


def test_transformer_cache_and_generation_shapes():
    torch.manual_seed(0)
    model = TextTransformer(ModelConfig(kind="transformer", vocab_size=13, dim=16, layers=2, heads=2, context=8))
    prompt = torch.randint(1, 13, (1, 3))
    a = [s.logits for s in decode(model.eval(), prompt, 4, None, True, lambda lg: lg.argmax(-1))]
    b = [s.logits for s in decode(model, prompt, 4, None, False, lambda lg: lg.argmax(-1))]
    torch.testing.assert_close(torch.stack(a), torch.stack(b), rtol=1e-5, atol=1e-5)
    out = generate(model, prompt, SampleOptions(max_new_tokens=10, temperature=0.0))
    assert out.shape == (1, 13)  # runs past the context by sliding the window


def test_frozen_weights_reuse_the_fused_projection_until_a_weight_changes():
    """Inference reuses one detached concatenation of the q/k/v (and w1/w3) weights; an optimizer-style in-place
    update invalidates it, and outside `frozen_weights` the weights keep their gradients."""
    from ebt.models.layers import Attention, fused_weight, frozen_weights

    torch.manual_seed(0)
    att = Attention(8, 2)
    ws = (att.wq.weight, att.wk.weight, att.wv.weight)
    with frozen_weights():
        first = fused_weight(att, *ws)
        assert fused_weight(att, *ws) is first and not first.requires_grad
        torch.testing.assert_close(first, torch.cat(ws))
        with torch.no_grad():
            att.wk.weight.add_(1.0)                     # bumps the version counter
        second = fused_weight(att, *ws)
        assert second is not first
        torch.testing.assert_close(second, torch.cat(ws))
    live = fused_weight(att, *ws)
    assert live.requires_grad
    live.sum().backward()
    assert all(w.grad is not None for w in ws)
