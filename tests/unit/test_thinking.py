"""System 2 thinking at inference: accept-lower, best-of-N selection, adaptive stopping, options."""
import math

import pytest
import torch

from ebt.config import ModelConfig, ThinkConfig
from ebt.errors import NonFinite, UserError
from ebt.text.evaluate import perplexity, ppl_change_pct
from ebt.text.inference import think
from ebt.thinking import select_samples
from ebt.text.models import TextEBT
from ebt.thinking import ThinkOptions, Thinker


def model(conditioning="none", steps=2, vocab=17):
    torch.manual_seed(0)
    m = TextEBT(ModelConfig(vocab_size=vocab, dim=16, layers=2, heads=2, context=8, conditioning=conditioning),
                ThinkConfig(landscapes=steps, alpha=5.0)).double().eval()
    return m


def test_accept_lower_never_raises_energy_and_more_steps_never_hurt():
    m = model("none", steps=1)
    x = torch.randint(1, 17, (3, 8))
    z0 = torch.randn(3, 8, 17, dtype=torch.float64)
    short = think(m, x, ThinkOptions(steps=3, accept_lower=True), z0=z0)
    long = think(m, x, ThinkOptions(steps=8, accept_lower=True), z0=z0)
    trace = torch.cat([long.energies, long.final_energy[None]])       # (steps + 1, B, L)
    assert (trace[1:] <= trace[:-1] + 1e-12).all()                    # per position, step by step
    assert long.final_energy.mean() <= short.final_energy.mean() + 1e-12
    assert (long.final_energy <= short.final_energy + 1e-12).all()


def test_best_of_n_min_never_picks_a_higher_energy_candidate():
    m = model("time_embed")
    x = torch.randint(1, 17, (2, 8))
    N = 4
    z0 = torch.randn(2 * N, 8, 17, dtype=torch.float64)
    best = think(m, x, ThinkOptions(samples=N, select="min"), z0=z0)
    singles = torch.stack([think(m, x, ThinkOptions(), z0=z0.view(2, N, 8, 17)[:, j]).final_energy
                           for j in range(N)], dim=1)                 # (B, N, L) each candidate on its own
    assert torch.allclose(best.final_energy, singles.min(dim=1).values, atol=1e-10)
    assert (best.final_energy[:, None] <= singles + 1e-10).all()
    worst = think(m, x, ThinkOptions(samples=N, select="max"), z0=z0)
    assert torch.allclose(worst.final_energy, singles.max(dim=1).values, atol=1e-10)


def test_select_samples_rules():
    initial = torch.tensor([[[5.0], [9.0], [4.0]]])  # (B=1, N=3, L=1)
    final = torch.tensor([[[1.0], [2.0], [3.0]]])
    assert select_samples(initial, final, "min").item() == 0
    assert select_samples(initial, final, "max").item() == 2
    assert select_samples(initial, final, "max_gap").item() == 1


def test_adaptive_stopping_spends_fewer_steps_on_easy_positions():
    """A quadratic energy per position: easy positions start at their minimum and settle at once."""
    thinker = Thinker(ThinkConfig(landscapes=1, alpha=0.2), softmax=False)
    target = torch.zeros(1, 4, 3)
    curvature = torch.tensor([0.0, 0.0, 1.0, 2.0])[None, :]            # positions 0, 1 are flat (easy)

    def energy(x, step):
        return curvature * ((x - target) ** 2).sum(-1)                 # (1, 4)

    z0 = torch.ones(1, 4, 3)
    out = thinker.descend(energy, z0, [0] * 20, ThinkOptions(tol=1e-4))
    used = out.steps_used[0]
    assert used[0] <= 1 and used[1] <= 1 and used[2] > 3 and used[3] > 3
    assert torch.equal(out.final[0, :2], z0[0, :2])                    # frozen positions untouched
    fixed = thinker.descend(energy, z0, [0] * 20, ThinkOptions())
    assert (fixed.steps_used == 20).all() and out.nfe <= fixed.nfe


def test_adaptive_stopping_stops_early_when_everything_settles():
    m = model("none", steps=1)
    x = torch.randint(1, 17, (1, 8))
    res = think(m, x, ThinkOptions(steps=50, tol=1e9))                 # everything "settles" after one step
    assert res.nfe <= 3 and (res.steps_used <= 1).all()


def test_entropy_weight_picks_by_energy_plus_entropy():
    """Each candidate on its own, then best-of-N: the chosen one minimises final energy + w x its entropy."""
    m = model("time_embed")
    x = torch.randint(1, 17, (2, 8))
    N, w = 4, 3.0
    z0 = torch.randn(2 * N, 8, 17, dtype=torch.float64)
    singles = [think(m, x, ThinkOptions(), z0=z0.view(2, N, 8, 17)[:, j]) for j in range(N)]
    score = torch.stack([s.final_energy + w * torch.special.entr(s.logits.softmax(-1)).sum(-1) for s in singles], 1)
    best = think(m, x, ThinkOptions(samples=N, entropy_weight=w), z0=z0)
    chosen = torch.stack([s.logits for s in singles], 1).gather(
        1, score.argmin(1)[:, None, :, None].expand(2, 1, 8, 17)).squeeze(1)
    torch.testing.assert_close(best.logits, chosen)


def test_alpha_spread_gives_each_candidate_its_step_size():
    m = model("none", steps=1)
    x = torch.randint(1, 17, (2, 8))
    N = 3
    z0 = torch.randn(2 * N, 8, 17, dtype=torch.float64)
    spread = think(m, x, ThinkOptions(samples=N, alpha_spread=2.0), z0=z0, trace=True)
    for j, factor in enumerate((0.5, 1.0, 2.0)):
        single = think(m, x, ThinkOptions(alpha_scale=factor), z0=z0.view(2, N, 8, 17)[:, j])
        torch.testing.assert_close(spread.trace["logits"][-1][:, j], single.logits)


def test_init_scale_scales_the_starting_noise():
    m = model("none", steps=1)
    x = torch.randint(1, 17, (1, 8))
    wide = think(m, x, ThinkOptions(steps=1, init_scale=3.0), generator=torch.Generator().manual_seed(0))
    z0 = (m.initial_logits(1, 8, generator=torch.Generator().manual_seed(0)) * 3.0).double()   # as think scales it
    torch.testing.assert_close(wide.logits, think(m, x, ThinkOptions(steps=1), z0=z0).logits)


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"samples": 0}, {"tol": -1.0}, {"langevin_std": -1.0},
                                    {"select": "median"}, {"alpha": 0.0}, {"init_scale": 0.0},
                                    {"entropy_weight": -1.0}, {"entropy_weight": float("inf")},
                                    {"alpha_spread": 0.5}])
def test_bad_thinking_options(kwargs):
    with pytest.raises(UserError):
        ThinkOptions(**kwargs)


def test_ood_sets_embedded_and_user_files(tmp_path):
    from ebt.text.ood import ood_sets

    mine = tmp_path / "mine.txt"
    mine.write_text("hello ood " * 50)
    both = ood_sets({"mine": str(mine)})
    assert {"python_docs", "dyck", "arithmetic", "mine"} <= set(both) and all(len(t) > 100 for t in both.values())
    only = ood_sets({"mine": str(mine)}, embedded=False)     # --no-embedded-ood: the embedded sets are not built
    assert only == {"mine": both["mine"]}
    with pytest.raises(UserError, match="does not exist"):
        ood_sets({"gone": str(tmp_path / "gone.txt")}, embedded=False)


# ---- Thinker.step: one update, as written in ebt/thinking.py ------------------------------------------------------
def test_step_is_one_gradient_update_in_probability_space():
    """z' = p - alpha dE/dp with p = softmax(z), both through the embedding fast path (System 1, inference) and the
    generic path (differentiable candidates), against a gradient taken here by hand."""
    m = model("time_embed")
    x = torch.randint(1, 17, (2, 8))
    energy = m.context_energy(x)
    z = torch.randn(2, 8, 17, dtype=torch.float64)
    p = m.thinker.distribution(z)
    torch.testing.assert_close(p, z.softmax(-1))
    fast = m.thinker.step(energy, p, 1, m.thinker.step_size())               # constant p: the embedding path
    leaf = p.clone().requires_grad_(True)
    e = energy(leaf, 1)
    (g,) = torch.autograd.grad(e.sum(), leaf)
    alpha = m.thinker.step_size().detach()
    torch.testing.assert_close(fast.candidates, p - alpha * g, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast.energy, e.detach(), rtol=1e-12, atol=1e-12)
    generic = m.thinker.step(energy, p.clone().requires_grad_(True), 1, alpha)   # differentiable p: dE/dp itself
    torch.testing.assert_close(generic.candidates, fast.candidates, rtol=1e-10, atol=1e-10)


def test_step_keeps_the_second_order_graph_only_when_asked():
    m = model("none")
    energy = m.context_energy(torch.randint(1, 17, (1, 8)))
    p = torch.randn(1, 8, 17, dtype=torch.float64).softmax(-1)
    alpha = m.thinker.step_size()
    trained = m.thinker.step(energy, p, 0, alpha, create_graph=True)
    loss = trained.candidates.square().sum()
    grads = torch.autograd.grad(loss, [m.energy.transformer.final_layer.weight])
    assert grads[0].abs().sum() > 0                                            # reaches the energy head: 2nd order
    inference = m.thinker.step(energy, p, 0, alpha)
    assert not inference.energy.requires_grad


def test_step_refuses_non_finite_gradients():
    thinker = Thinker(ThinkConfig(landscapes=1, alpha=1.0), softmax=False)
    with pytest.raises(NonFinite, match="lower the step size"):
        thinker.step(lambda x, k: (x * float("inf")).sum(-1), torch.ones(1, 2, 3), 0, thinker.step_size())


def test_descend_is_the_loop_of_steps():
    """A continuous quadratic energy: descend's candidates are the steps applied one after another."""
    thinker = Thinker(ThinkConfig(landscapes=2, alpha=0.1), softmax=False)
    target = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]])

    def energy(x, k):                                                          # (1, 2, 2) -> (1, 2)
        return (k + 1) * ((x - target) ** 2).sum(-1)

    z = torch.zeros(1, 2, 2)
    out = thinker.descend(energy, z, [0, 1, 1])
    alpha = thinker.step_size().detach()
    for k, got in zip([0, 1, 1], out.candidates):
        z = z - alpha * 2 * (k + 1) * (z - target)                             # the analytic gradient step
        torch.testing.assert_close(got, z)
    assert out.nfe == 3 and (out.steps_used == 3).all() and out.schedule == [0, 1, 1]


def test_think_longer_adds_steps_to_the_trained_schedule():
    """+1 step is one more than the trained evaluation schedule: 2 -> 3 steps for System 1 with two landscapes,
    3 -> 4 on the single landscape of the System 2 recipe (rand_steps = 2)."""
    from ebt.presets import get_preset

    s1, s2 = Thinker(get_preset("lm-tiny").think), Thinker(get_preset("lm-tiny-s2").think)
    for thinker, trained in ((s1, [0, 1]), (s2, [0, 0, 0])):
        assert thinker.schedule(training=False) == trained
        longer = thinker.think_longer(1, samples=2)
        assert thinker.inference_schedule(longer.steps, longer.final_landscape_only) == trained + [trained[-1]]
        assert longer.samples == 2


def test_perplexity_change_comes_from_cross_entropies():
    """The sweep's % change of perplexity is the ratio of perplexities, and stays right for a diverged model whose
    perplexities are both capped (where comparing them gives 0%)."""
    assert ppl_change_pct(math.log(12.0), math.log(10.0)) == pytest.approx(20.0)
    assert perplexity(3339.5) == perplexity(3339.4)
    assert ppl_change_pct(3339.5, 3339.4) == pytest.approx(100 * (math.exp(0.1) - 1))
