"""The explicit inference passes (models/explicit.py) against the autograd modules: energies and dE/dx in float64
for every conditioning, KV-cache extension, whole descents, generation and the Transformer++'s decode path."""
import pytest
import torch

from ebt.config import ModelConfig, ThinkConfig
from ebt.models.ar_ebt import ContextEnergy
from ebt.models.explicit import inference_path
from ebt.text.generation import SampleOptions, decode, generate
from ebt.text.inference import think
from ebt.text.models import TextEBT, TextTransformer
from ebt.thinking import ThinkOptions

CONDITIONINGS = ("time_embed", "pred_embed", "none", "adaln", "adaln_zero")


def tiny(conditioning="time_embed", kind="ebt", vocab=13, context=9, dtype=torch.float64, **model):
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, vocab_size=vocab, dim=16, layers=2, heads=2, context=context,
                      conditioning=conditioning, **model)
    net = TextEBT(cfg, ThinkConfig(landscapes=2, alpha=3.0)) if kind == "ebt" else TextTransformer(cfg)
    net = net.to(dtype).eval()
    with torch.no_grad():   # move the adaLN-zero model off its zero initialisation so every term is exercised
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def autograd_energy_grad(fn: ContextEnergy, probs: torch.Tensor, step: int):
    x = fn.embed(probs).detach().requires_grad_(True)
    with torch.enable_grad():
        e = fn.from_embedding(x, step)
        (dx,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), dx


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_energy_and_gradient_equal_autograd_in_float64(conditioning):
    net = tiny(conditioning)
    ids = torch.randint(1, 13, (3, 7))
    probs = torch.randn(3, 7, 13, dtype=torch.float64).softmax(-1)
    for start, length in ((0, 7), (6, 1), (2, 4)):   # every position, the last one (generation), a middle run
        p = probs[:, :length]
        with torch.no_grad():
            fn = ContextEnergy(net.energy, ids, start=start)
            for step in (0, 1):
                e_ref, dx_ref = autograd_energy_grad(fn, p, step)
                e, dx = fn.energy_and_grad(p, step)
                torch.testing.assert_close(e, e_ref, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(dx, dx_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("conditioning", ["time_embed", "adaln"])
def test_query_blocks_give_the_same_energies_and_gradients(conditioning, monkeypatch):
    """Candidate rows in blocks of 2 (each against only the keys its rows may see) equal autograd's whole call."""
    from ebt.models import explicit

    monkeypatch.setattr(explicit, "MIN_BLOCK", 2)
    net = tiny(conditioning)
    ids = torch.randint(1, 13, (2, 7))
    p = torch.randn(2, 5, 13, dtype=torch.float64).softmax(-1)
    assert len(explicit._row_blocks(5, 8, 1, None)) == 3 and len(explicit._row_blocks(1, 8, None, None)) == 1
    with torch.no_grad():
        fn = ContextEnergy(net.energy, ids, start=1)
        for step in (0, 1):
            e_ref, dx_ref = autograd_energy_grad(fn, p, step)
            e, dx = fn.energy_and_grad(p, step)
            torch.testing.assert_close(e, e_ref, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(dx, dx_ref, rtol=1e-10, atol=1e-12)


def test_gradient_matches_finite_differences():
    """An independent check of the hand-derived backward: central differences of the explicit energy itself."""
    net = tiny("adaln")
    ids = torch.randint(1, 13, (1, 5))
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        obs = net.energy.observe(ids, 1)
        _, dx = net.energy.energy_and_grad(obs, x, 1)
        h = 1e-6
        for idx in ((0, 0, 3), (0, 2, 0), (0, 4, 15)):
            d = torch.zeros_like(x)
            d[idx] = h
            fd = (net.energy.energy_and_grad(obs, x + d, 1)[0].sum()
                  - net.energy.energy_and_grad(obs, x - d, 1)[0].sum()) / (2 * h)
            assert abs(fd.item() - dx[idx].item()) < 1e-7


def test_pack_is_rebuilt_when_a_weight_changes():
    net = tiny("pred_embed")
    ids = torch.randint(1, 13, (1, 4))
    p = torch.randn(1, 4, 13, dtype=torch.float64).softmax(-1)
    with torch.no_grad():
        fn = ContextEnergy(net.energy, ids)
        before = fn.energy_and_grad(p, 0)[0]
        net.energy.transformer.layers[0].attention.wv.weight.mul_(2.0)
        fn = ContextEnergy(net.energy, ids)
        after = fn.energy_and_grad(p, 0)[0]
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, autograd_energy_grad(fn, p, 0)[0], rtol=1e-12, atol=1e-12)


def test_pack_follows_replaced_parameters_and_training_mode():
    net = tiny("adaln")
    ids = torch.randint(1, 13, (1, 4))
    p = torch.randn(1, 4, 13, dtype=torch.float64).softmax(-1)
    wq = net.energy.transformer.layers[0].attention.wq
    with torch.no_grad():
        ContextEnergy(net.energy, ids).energy_and_grad(p, 1)
        wq.weight = torch.nn.Parameter(wq.weight * 3.0)                 # a new Parameter object
        fn = ContextEnergy(net.energy, ids)
        torch.testing.assert_close(fn.energy_and_grad(p, 1)[1], autograd_energy_grad(fn, p, 1)[1],
                                   rtol=1e-10, atol=1e-12)
    assert net.energy.__dict__.get("_explicit_packs")
    net.train()
    assert not net.energy.__dict__.get("_explicit_packs")              # no packs kept through training


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_cache_extension_equals_the_modules(conditioning):
    net = tiny(conditioning)
    ids = torch.randint(1, 13, (2, 8))
    with torch.no_grad():
        cache = net.start_cache(ids[:, :3])
        for t in range(3, 8):   # one token at a time, then compare with the whole window observed at once
            cache = net.extend_cache(cache, ids[:, t:t + 1])
        full = net.start_cache(ids)
        for key, obs in cache.items():
            assert obs.length == full[key].length
            for (k, v), (k_ref, v_ref) in zip(obs.kv, full[key].kv):
                torch.testing.assert_close(k, k_ref, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(v, v_ref, rtol=1e-12, atol=1e-12)


def test_transformer_decode_equals_the_modules():
    net = tiny("none", kind="transformer")
    ids = torch.randint(1, 13, (2, 4))
    with torch.no_grad():
        cache = net.start_cache(ids[:, :1])
        cache = net.extend_cache(cache, ids[:, 1:3])   # two tokens at once: causal among themselves
        cache = net.extend_cache(cache, ids[:, 3:])
        ref = net.net(ids)[:, -1]
        torch.testing.assert_close(net.next_logits(ids, cache).logits, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options", [None, ThinkOptions(steps=3, samples=3), ThinkOptions(tol=1e-3, accept_lower=True),
                                     ThinkOptions(langevin_std=0.5, select="max_gap")])
def test_descents_equal_the_autograd_path(options):
    net = tiny("time_embed")
    ids = torch.randint(1, 13, (2, 6))
    runs = []
    for use_autograd in (False, True):
        gen = torch.Generator().manual_seed(3)
        torch.manual_seed(4)   # Langevin noise comes from the global generator
        if use_autograd:
            with inference_path("autograd"):
                runs.append(think(net, ids, options, generator=gen))
        else:
            runs.append(think(net, ids, options, generator=gen))
    fast, slow = runs
    torch.testing.assert_close(fast.logits, slow.logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast.energies, slow.energies, rtol=1e-10, atol=1e-10)
    assert torch.equal(fast.steps_used, slow.steps_used)


@pytest.mark.parametrize("kind,conditioning", [("ebt", "time_embed"), ("ebt", "pred_embed"), ("ebt", "adaln"),
                                               ("transformer", "none")])
def test_greedy_generation_is_identical_in_float32(kind, conditioning):
    """Tokens identical to the autograd path (float32, as users run it), past the window's end (cache rebuilt)."""
    net = tiny(conditioning, kind=kind, dtype=torch.float32, context=8)
    prompt = torch.randint(1, 13, (2, 3))
    opts = SampleOptions(max_new_tokens=9, temperature=0, seed=1)
    fast = generate(net, prompt, opts)
    with inference_path("autograd"):
        slow = generate(net, prompt, opts)
    assert torch.equal(fast, slow)


def test_energies_reported_while_decoding_equal_the_autograd_path():
    net = tiny("pred_embed", context=12)
    prompt = torch.randint(1, 13, (1, 4))

    def energies():
        steps = decode(net, prompt, 5, None, True, lambda lg: lg.argmax(-1), torch.Generator().manual_seed(0),
                       final_energy=True)
        return torch.stack([s.thought.final_energy for s in steps])

    fast = energies()
    with inference_path("autograd"):
        slow = energies()
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("options", [None, ThinkOptions(accept_lower=True), ThinkOptions(tol=1e-3, steps=3)])
def test_non_finite_weights_stop_the_descent_with_the_fix(options):
    """Also where accept-lower or settling would otherwise put back the (finite) previous candidates."""
    from ebt.errors import NonFinite

    net = tiny("pred_embed")
    with torch.no_grad():
        net.energy.transformer.layers[1].feed_forward.w2.weight[0, 0] = float("nan")
    with pytest.raises(NonFinite, match="lower the step size"):
        think(net, torch.randint(1, 13, (1, 4)), options)


@pytest.mark.parametrize("conditioning", ["time_embed", "adaln"])
def test_video_rollouts_equal_the_autograd_path(conditioning):
    """Continuous candidates (frame latents, embedded by z W^T + b) take the explicit passes too."""
    from test_video import tiny_model as tiny_video
    from ebt.video.models import rollout

    model = tiny_video(conditioning=conditioning)
    ctx = torch.randn(2, 3, model.encoder.latent_dim, dtype=torch.float64)
    opts = ThinkOptions(steps=2, samples=2)
    fast = rollout(model, ctx, 4, opts, torch.Generator().manual_seed(0))
    with inference_path("autograd"):
        slow = rollout(model, ctx, 4, opts, torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast.latents, slow.latents, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast.energies, slow.energies, rtol=1e-10, atol=1e-10)


def test_the_compiled_path_traces_whole_windows_and_generation(monkeypatch):
    """Dynamo traces the explicit passes (the eager backend: tracing without code generation, fast enough for CI)
    for whole-window calls (query blocks) and generation, with the same results as the eager passes."""
    from ebt.models import explicit

    monkeypatch.setattr(explicit, "COMPILE_BACKEND", "eager")
    net = tiny("adaln", dtype=torch.float32, context=24)
    ids = torch.randint(1, 13, (2, 24))
    monkeypatch.setattr(explicit, "MIN_BLOCK", 8)
    eager = think(net, ids, generator=torch.Generator().manual_seed(0))
    with inference_path("compiled"):
        compiled = think(net, ids, generator=torch.Generator().manual_seed(0))
        tokens = generate(net, ids[:1, :4], SampleOptions(max_new_tokens=3, temperature=0, seed=1))
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-4, atol=1e-3)
    assert torch.equal(tokens, generate(net, ids[:1, :4], SampleOptions(max_new_tokens=3, temperature=0, seed=1)))
