"""Exact second-order training gradients of the text EBT: gradgradcheck of the energy, the training loss against
finite differences, stepwise (System 1) gradients equal to the joint backward, no graph outside training."""
import random

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from ebt.config import ModelConfig, ThinkConfig
from ebt.models.ar_ebt import ContextEnergy
from ebt.text.models import TextEBT


def tiny_ebt(conditioning="time_embed", steps=2, vocab=11, length=5, batch=2, **think):
    torch.manual_seed(0)
    model = TextEBT(ModelConfig(vocab_size=vocab, dim=8, layers=2, heads=2, context=length,
                                conditioning=conditioning), ThinkConfig(landscapes=steps, alpha=3.0, **think)).double()
    ids = torch.randint(1, vocab, (batch, length + 1))
    return model, ids


def test_energy_gradgradcheck_wrt_candidates():
    for cond in ("time_embed", "none", "adaln", "pred_embed"):
        model, ids = tiny_ebt(cond, vocab=5, length=3, batch=1)
        fn = ContextEnergy(model.energy, ids[:, :-1])
        p = torch.rand(1, 3, 5, dtype=torch.float64).softmax(-1).requires_grad_(True)
        assert gradcheck(lambda q: fn(q, 1), (p,))
        assert gradgradcheck(lambda q: fn(q, 1), (p,))


def test_energy_input_gradient_is_differentiable_in_a_parameter():
    """d/dW of dE/dp — the term EBT training back-propagates through — against finite differences."""
    from torch.nn.utils.stateless import _reparametrize_module

    model, ids = tiny_ebt("none", vocab=5, length=3, batch=1)
    name = "transformer.layers.0.attention.wq.weight"
    p = torch.rand(1, 3, 5, dtype=torch.float64).softmax(-1)

    def input_grad(weight):
        probs = p.clone().requires_grad_(True)
        with _reparametrize_module(model.energy, {name: weight}):
            e = ContextEnergy(model.energy, ids[:, :-1])(probs, 0)
            (g,) = torch.autograd.grad(e.sum(), probs, create_graph=True)
        return g

    w = dict(model.energy.named_parameters())[name].detach().clone().requires_grad_(True)
    assert gradcheck(input_grad, (w,))


def test_training_loss_matches_finite_differences():
    """Central differences of the training loss vs autograd, where the gradient is the total derivative:
    one step (S1 detaching changes nothing), and several steps without detaching (the full chain). With
    detaching (S1) or truncation (S2) the gradient deliberately drops paths, so finite differences do not apply."""
    for think in ({"steps": 1}, {"steps": 2, "detach": False}, {"steps": 3, "detach": False}):
        model, ids = tiny_ebt("time_embed", **think)
        z0 = torch.randn(2, 5, 11, dtype=torch.float64)
        params = [model.energy.transformer.layers[1].feed_forward.w1.weight, model.energy.vocab_to_embed.weight,
                  model.energy.transformer.final_layer.weight, model.thinker.alpha]
        loss = model(ids, z0=z0.clone(), training=True).loss
        grads = torch.autograd.grad(loss, params)
        gen = torch.Generator().manual_seed(1)
        for p, g in zip(params, grads):
            for _ in range(3):
                idx = tuple(int(torch.randint(0, s, (1,), generator=gen)) for s in p.shape)
                eps = 1e-6
                with torch.no_grad():
                    orig = p[idx].item()
                    p[idx] = orig + eps
                    up = model(ids, z0=z0.clone(), training=True).loss.item()
                    p[idx] = orig - eps
                    down = model(ids, z0=z0.clone(), training=True).loss.item()
                    p[idx] = orig
                fd = (up - down) / (2 * eps)
                assert abs(fd - g[idx].item()) <= 1e-6 * max(1.0, abs(fd)), (think, p.shape, idx, fd, g[idx].item())


@pytest.mark.parametrize("think", [dict(landscapes=2), dict(landscapes=2, rand_alpha_scale=2.0, rand_steps=1)])
def test_stepwise_gradients_equal_joint_backward(think):
    torch.manual_seed(0)
    mc = ModelConfig(vocab_size=11, dim=16, layers=2, heads=2, context=6, conditioning="time_embed")
    joint = TextEBT(mc, ThinkConfig(alpha=3.0, stepwise_grad=False, **think)).double()
    step = TextEBT(mc, ThinkConfig(alpha=3.0, stepwise_grad=True, **think)).double()
    step.load_state_dict(joint.state_dict())
    ids = torch.randint(1, 11, (2, 7))
    losses = []
    for m in (joint, step):
        torch.manual_seed(5)  # the same random step sizes and step counts
        random.seed(5)
        out = m(ids, z0=torch.randn(2, 6, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
        out.loss.backward()
        losses.append(out.loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    for (n, a), b in zip(joint.named_parameters(), step.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=n)


def test_no_second_order_graph_outside_training():
    torch.manual_seed(0)
    model = TextEBT(ModelConfig(vocab_size=11, dim=16, layers=2, heads=2, context=6), ThinkConfig(landscapes=2)).eval()
    out = model(torch.randint(1, 11, (2, 7)))
    assert not out.loss.requires_grad and all(not z.requires_grad for z in out.thought.candidates)
