"""Generation's decoders (text/decoding.py): the static decoder, one fixed-shape function per token, against the
autograd path in float64 (logits and energies of every token, past the window's end), which options it covers,
and its compiled form traced once for a whole generation."""
import pytest
import torch

from ebt.config import ThinkConfig
from ebt.errors import NonFinite
from ebt.models import explicit
from ebt.models.explicit import inference_path
from ebt.text.decoding import CacheDecoder, EBTStaticDecoder, TransformerStaticDecoder
from ebt.text.generation import decode
from ebt.text.models import TextEBT
from ebt.thinking import ThinkOptions

from test_explicit import CONDITIONINGS, tiny


def run(net, prompt, new, options=None, path="explicit"):
    """Every decoding step's logits (new, B, V), energies (new, steps, B) or None, and tokens (B, new)."""
    with inference_path(path):
        steps = list(decode(net, prompt, new, options, True, lambda lg: lg.argmax(-1),
                            torch.Generator().manual_seed(0)))
    energies = None if steps[0].thought is None else torch.stack([s.thought.energies[:, :, -1] for s in steps])
    return torch.stack([s.logits for s in steps]), energies, torch.stack([s.token for s in steps], 1)


@pytest.mark.parametrize("kind,conditioning", [("ebt", c) for c in CONDITIONINGS] + [("transformer", "none")])
@pytest.mark.parametrize("prompt_length", [1, 3])
def test_static_decoding_equals_the_autograd_path_in_float64(kind, conditioning, prompt_length):
    """9 new tokens with a context of 8: the window slides and the decoder starts again on it."""
    net = tiny(conditioning, kind=kind, context=8)
    prompt = torch.randint(1, 13, (2, prompt_length))
    with torch.no_grad():
        decoder = net.decoder(prompt)
    assert isinstance(decoder, EBTStaticDecoder if kind == "ebt" else TransformerStaticDecoder)
    logits, energies, tokens = run(net, prompt, 9)
    ref_logits, ref_energies, ref_tokens = run(net, prompt, 9, path="autograd")
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-9)
    if kind == "ebt":
        torch.testing.assert_close(energies, ref_energies, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("options,think", [
    (ThinkOptions(steps=3, final_landscape_only=True, alpha_scale=0.5, init_scale=2.0), {}),
    (ThinkOptions(steps=2, alpha=4.0), {}),
    (None, {"step_from": "logits"}),
])
def test_static_decoding_covers_the_plain_options(options, think):
    net = tiny("time_embed", context=10)
    if think:   # the same weights under another thinking recipe
        other = TextEBT(net.cfg, ThinkConfig(landscapes=2, alpha=3.0, **think)).to(torch.float64).eval()
        other.load_state_dict(net.state_dict())
        net = other
    prompt = torch.randint(1, 13, (1, 4))
    logits, energies, tokens = run(net, prompt, 5, options)
    ref_logits, ref_energies, ref_tokens = run(net, prompt, 5, options, path="autograd")
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(energies, ref_energies, rtol=1e-10, atol=1e-12)


def test_other_options_and_paths_keep_the_cache_decoder():
    net = tiny("pred_embed")
    prompt = torch.randint(1, 13, (1, 3))
    with torch.no_grad():
        assert isinstance(net.decoder(prompt), EBTStaticDecoder)
        for options in (ThinkOptions(samples=2), ThinkOptions(tol=1e-3), ThinkOptions(accept_lower=True),
                        ThinkOptions(langevin_std=0.1)):
            assert isinstance(net.decoder(prompt, options), CacheDecoder)
        assert isinstance(net.decoder(prompt, final_energy=True), CacheDecoder)
        with inference_path("autograd"):
            assert isinstance(net.decoder(prompt), CacheDecoder)
    assert isinstance(net.decoder(prompt), CacheDecoder)   # gradients enabled: the modules


def test_static_decoder_refuses_to_run_past_its_buffers():
    net = tiny("none", kind="transformer", context=4)
    with torch.no_grad():
        decoder = net.decoder(torch.randint(1, 13, (1, 3)))
        decoder.first()
        decoder.advance(torch.tensor([[1]]))
        with pytest.raises(ValueError, match="start a new one"):
            decoder.advance(torch.tensor([[2]]))


def test_non_finite_weights_stop_static_decoding_with_the_fix():
    net = tiny("time_embed")
    with torch.no_grad():
        net.energy.transformer.layers[0].feed_forward.w2.weight[0, 0] = float("nan")
    with pytest.raises(NonFinite, match="lower the step size"):
        run(net, torch.randint(1, 13, (1, 3)), 2)


@pytest.mark.parametrize("kind,conditioning", [("ebt", "time_embed"), ("ebt", "pred_embed"), ("transformer", "none")])
@pytest.mark.parametrize("prompt_length,dtype", [(1, torch.long), (2, torch.int32), (3, torch.long)])
def test_compiled_decoding_is_one_graph_for_the_whole_generation(kind, conditioning, prompt_length, dtype,
                                                                  monkeypatch):
    """Dynamo captures each token's function whole (fullgraph) once: the growing window changes no shape, one-token
    prefills stay eager and an int32 prompt does not recompile. Traced with a counting backend that runs the graph
    eagerly (no code generation, fast enough for CI)."""
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    monkeypatch.setattr(explicit, "COMPILE_BACKEND", counting)
    net = tiny(conditioning, kind=kind, dtype=torch.float64, context=12)
    prompt = torch.randint(1, 13, (1, prompt_length), dtype=dtype)
    logits, _, tokens = run(net, prompt, 8, path="compiled")
    ref_logits, _, ref_tokens = run(net, prompt, 8)
    assert len(graphs) == 1
    assert torch.equal(tokens, ref_tokens)
    # float64: the graph (which reads one copy of each weight as views) equals the eager passes to round-off
    torch.testing.assert_close(logits, ref_logits, rtol=1e-9, atol=1e-9)
