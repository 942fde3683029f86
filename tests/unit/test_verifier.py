"""The verifier loss (ebt/text/verifier.py): its value against a hand computation, its wiring into training, and
that minimising it teaches an energy to rank candidates."""
import math

import pytest
import torch

from ebt.config import ThinkConfig
from ebt.errors import UserError
from ebt.text.models import PAD_ID, TextEBT
from ebt.text.verifier import verifier_loss
from ebt.thinking import ThinkOptions
from tests.unit.test_s2 import ids_batch, s2_think


def test_matches_a_hand_computation():
    torch.manual_seed(0)
    B, L, V, scales = 2, 3, 5, (0.5, 1.0, 2.0)
    z = torch.randn(B, L, V, dtype=torch.float64) * 3
    y = torch.randint(1, V, (B, L))
    y[1, 2] = PAD_ID                                       # a pad target is left out of both means
    w = torch.randn(V, dtype=torch.float64)
    calls = []

    def energy(p, landscape):                              # a linear energy E = p . w, (B, L)
        calls.append(landscape)
        return p @ w

    loss, hit = verifier_loss(energy, z, y, scales, 0.5, 1, PAD_ID)
    total, hits, n = 0.0, 0, 0
    for b in range(B):
        for t in range(L):
            if y[b, t] == PAD_ID:
                continue
            e = [float(torch.softmax(s * z[b, t], -1) @ w) for s in scales]
            like = [float(torch.softmax(s * z[b, t], -1)[y[b, t]]) for s in scales]
            q = [v / sum(like) for v in like]
            log_pred = [-v / 0.5 - math.log(sum(math.exp(-u / 0.5) for u in e)) for v in e]
            total -= sum(qi * li for qi, li in zip(q, log_pred))
            hits += int(min(range(3), key=e.__getitem__) == max(range(3), key=like.__getitem__))
            n += 1
    assert calls == [1, 1, 1]
    assert loss.item() == pytest.approx(total / n, rel=1e-5)   # the log-softmax of the targets runs in float32
    assert hit.item() == pytest.approx(hits / n)


def test_training_adds_weight_times_verifier_loss(tiny_cfg):
    torch.manual_seed(0)
    ids = ids_batch(B=2, L=tiny_cfg.model.context)
    fixed = dict(replay_size=0, langevin_std=0.0, rand_alpha_scale=1.0, rand_steps=0, rand_steps_min=0)
    plain = TextEBT(tiny_cfg.model, s2_think(**fixed))
    verified = TextEBT(tiny_cfg.model, s2_think(**fixed, verify_weight=0.5))
    verified.load_state_dict(plain.state_dict())
    z0 = torch.randn(2, tiny_cfg.model.context, tiny_cfg.model.vocab_size)
    # z0 given and nothing random: the same descent in both
    a = plain(ids, z0=z0, training=True)
    b = verified(ids, z0=z0, training=True)
    assert "verify_loss" not in a.metrics and 0 <= b.metrics["verify_hit"] <= 1
    assert b.loss.item() == pytest.approx(a.loss.item() + 0.5 * b.metrics["verify_loss"], rel=1e-5)
    b.loss.backward()
    a.loss.backward()
    diff = [(pa.grad - pb.grad).abs().max().item() for pa, pb in zip(plain.parameters(), verified.parameters())
            if pa.grad is not None]
    assert max(diff) > 1e-4                               # the verifier loss reaches the energy's parameters
    # evaluation (no randomisation) never adds it
    assert "verify_loss" not in verified(ids, z0=z0, training=False).metrics


def test_minimising_it_teaches_the_energy_to_rank(tiny_cfg):
    """A few Adam steps on the verifier loss alone lower it and raise the hit rate on the batch it sees."""
    torch.manual_seed(0)
    model = TextEBT(tiny_cfg.model, s2_think(replay_size=0, verify_weight=1.0, verify_scales=(0.25, 1.0, 4.0)))
    ids = ids_batch(B=4, L=tiny_cfg.model.context)
    x, y = ids[:, :-1], ids[:, 1:]
    final = torch.randn(4, tiny_cfg.model.context, tiny_cfg.model.vocab_size) * 2
    final.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(y, 3.0, dtype=final.dtype).unsqueeze(-1))  # mostly right
    opt = torch.optim.Adam(model.energy.parameters(), lr=3e-3)
    losses, hits = [], []
    for _ in range(20):
        loss, hit = verifier_loss(model.context_energy(x), final, y, (0.25, 1.0, 4.0), 0.1, 0, PAD_ID)
        losses.append(loss.item())
        hits.append(hit.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.2 and hits[-1] > hits[0] + 0.2, (losses[::5], hits[::5])


@pytest.mark.parametrize("kw, needle", [({"verify_weight": -1.0}, "verify_weight"),
                                        ({"verify_weight": float("nan")}, "verify_weight"),
                                        ({"verify_scales": (1.0,)}, "verify_scales"),
                                        ({"verify_scales": (0.5, 0.0)}, "verify_scales"),
                                        ({"verify_temperature": 0.0}, "verify_temperature")])
def test_bad_settings_are_refused(kw, needle):
    with pytest.raises(UserError, match=needle):
        ThinkConfig(**kw)


def test_text_only_settings_are_refused_for_images_and_video():
    import dataclasses

    from ebt.config.parsing import from_dict
    from ebt.images.config import denoise_tiny
    from ebt.video.config import video_tiny

    assert from_dict(ThinkConfig, {"verify_scales": "0.5,1,2"}).verify_scales == (0.5, 1.0, 2.0)   # the CLI form
    with pytest.raises(UserError, match="verify_scales"):
        ThinkConfig(verify_scales=["a", 1])                                                       # a YAML list
    for preset in (denoise_tiny, video_tiny):
        for kw in ({"verify_weight": 1.0}, {"step_from": "logits"}):
            cfg = preset()
            with pytest.raises(UserError, match=f"think.{next(iter(kw))}: text models only"):
                dataclasses.replace(cfg, think=dataclasses.replace(cfg.think, **kw))


# ---- descent in logit space (think.step_from="logits") ------------------------------------------------------------
def logit_space_model(dtype=torch.float64):
    from tests.conftest import tiny_text_ebt

    model = tiny_text_ebt("time_embed", dtype=dtype)
    model.think_cfg.step_from = "logits"   # the Thinker shares the config object
    return model


def test_logit_space_descent_accumulates_the_gradients():
    """z_K = z_0 - alpha sum_k dE/dp at p_k = softmax(z_k), against autograd on the energy directly (float64)."""
    model = logit_space_model()
    ids = torch.randint(1, 13, (2, 6))
    z0 = torch.randn(2, 6, 13, dtype=torch.float64)
    fn = model.context_energy(ids)
    schedule = [0, 1, 1]
    with torch.no_grad():
        out = model.thinker.descend(fn, z0, schedule)
    z = z0.clone()
    alpha = model.thinker.step_size().detach()
    for k in schedule:
        p = z.softmax(-1).requires_grad_(True)
        (g,) = torch.autograd.grad(fn(p, k).sum(), p)
        z = z - alpha * g
    torch.testing.assert_close(out.final, z, rtol=1e-10, atol=1e-10)
    model.thinker.cfg.step_from = "probs"   # the reference's update is a different descent
    with torch.no_grad():
        assert not torch.allclose(model.thinker.descend(fn, z0, schedule).final, z)


@pytest.mark.parametrize("options", [None, ThinkOptions(steps=3, samples=2, accept_lower=True)])
def test_logit_space_descent_is_the_same_on_every_inference_path(options):
    from ebt.models.explicit import inference_path
    from ebt.text.inference import think

    model = logit_space_model()
    ids = torch.randint(1, 13, (2, 6))
    runs = []
    for path in ("explicit", "autograd"):
        with inference_path(path):
            runs.append(think(model, ids, options, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(runs[0].logits, runs[1].logits, rtol=1e-10, atol=1e-10)
    model.think_cfg.step_from = "probs"   # and it is a different descent from the reference's
    reference = think(model, ids, options, generator=torch.Generator().manual_seed(3))
    assert (reference.logits - runs[0].logits).abs().max() > 1e-3


def test_logit_space_training_gradient_matches_finite_differences():
    """The S2 chain in logit space: d(loss)/d(alpha) by autograd against a central difference (float64)."""
    from ebt.thinking import Thinker

    model = logit_space_model()
    think = s2_think(replay_size=0, langevin_std=0.0, rand_alpha_scale=1.0, rand_steps=2, rand_steps_min=3,
                     learn_alpha=True, alpha=2.0, step_from="logits", truncate=False)   # 3 steps, nothing random;
    # no truncation: the exact gradient through every step, which a finite difference checks
    model.think_cfg, model.thinker = think, Thinker(think).to(torch.float64)
    ids = torch.randint(1, 13, (2, 7))
    z0 = torch.randn(2, 6, 13, dtype=torch.float64)
    out = model(ids, z0=z0, training=True)
    loss = out.loss
    assert out.metrics["steps"] == 3
    (grad,) = torch.autograd.grad(loss, model.thinker.alpha)
    h = 1e-6
    with torch.no_grad():
        model.thinker.alpha += h
        up = model(ids, z0=z0, training=False).loss
        model.thinker.alpha -= 2 * h
        down = model(ids, z0=z0, training=False).loss
        model.thinker.alpha += h
        assert model(ids, z0=z0, training=False).loss.item() == pytest.approx(loss.item(), rel=1e-12)
    assert grad.item() == pytest.approx(((up - down) / (2 * h)).item(), rel=1e-5)
