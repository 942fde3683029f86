"""Text inference with the KV cache (ebt/text/inference.py, generation.py): the cache changes nothing, for both
models."""
import pytest
import torch

from ebt.config import ModelConfig
from ebt.text.generation import SampleOptions, decode, generate
from ebt.text.inference import build_cache, think
from ebt.text.models import TextTransformer
from ebt.thinking import ThinkOptions

from conftest import tiny_text_ebt


def greedy_logits(model, prompt, use_cache: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    steps = decode(model, prompt, 6, ThinkOptions(steps=2), use_cache, lambda lg: lg.argmax(-1), gen)
    return torch.stack([s.logits.double() for s in steps])


@pytest.mark.parametrize("conditioning", ["time_embed", "none", "adaln"])
def test_kv_cache_matches_uncached_logits(conditioning):
    """The cache changes nothing: round-off only in float64; in float32 the cached and uncached logits each stay
    within float32 round-off of the float64 result and of each other (measured up to 1.1e-4 and 4e-5 relative:
    thinking amplifies round-off by up to ~1e3 on some prompts)."""
    prompt = torch.randint(1, 13, (1, 4), generator=torch.Generator().manual_seed(0))
    model = tiny_text_ebt(conditioning, dtype=torch.float64, ctx=12).eval()
    ref = greedy_logits(model, prompt, False)
    cached = greedy_logits(model, prompt, True)
    assert ((cached - ref).norm() / ref.norm()).item() <= 1e-12
    model32 = tiny_text_ebt(conditioning, dtype=torch.float32, ctx=12).eval()
    cached, uncached = greedy_logits(model32, prompt, True), greedy_logits(model32, prompt, False)
    roundoff = max((cached - ref).norm(), (uncached - ref).norm()) / ref.norm()
    assert 0 < roundoff < 1e-3                                   # float32 round-off, not a different computation
    assert ((cached - uncached).norm() / ref.norm()).item() < 5e-4


@pytest.mark.parametrize("conditioning", ["time_embed", "none"])
def test_cached_position_matches_full_sequence_prediction(conditioning):
    """Thinking at one position through the cache equals that position of a whole-sequence descent."""
    model = tiny_text_ebt(conditioning)
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
