"""The System 2 training recipe: replay buffer, Langevin noise, random step sizes and counts, gradients through the
chain, presets and the ablation's variants."""
import dataclasses
import random

import pytest
import torch

from ebt.config import ThinkConfig
from ebt.text.models import TextEBT, cross_entropy
from ebt.text.replay import ReplayBuffer, record_bytes
from ebt.thinking import Thinker


def s2_think(**kw) -> ThinkConfig:
    base = dict(landscapes=1, alpha=20.0, learn_alpha=False, detach=False, truncate=True, langevin_std=3.0,
                rand_alpha_scale=2.0, rand_steps=2, rand_steps_min=2, replay_size=8, replay_frac=0.5)
    return ThinkConfig(**{**base, **kw})


def ids_batch(B=4, L=16, V=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, V, (B, L + 1), generator=g)


# ---- replay buffer ------------------------------------------------------------------------------------------------
def test_buffer_fifo_and_sampling():
    buf = ReplayBuffer(3, dtype="float32")
    for i in range(5):  # 5 pushes of one row into 3 slots: rows 2, 3, 4 survive
        buf.push(torch.full((1, 5), i), torch.full((1, 4, 7), float(i)))
    assert len(buf) == 3 and [int(r.ids[0]) for r in buf.records] == [2, 3, 4]
    ids, z = buf.sample(10, window=5, rng=random.Random(0))  # capped at len, without replacement
    assert ids.shape == (3, 5) and z.shape == (3, 4, 7) and sorted(ids[:, 0].tolist()) == [2, 3, 4]
    assert torch.equal(z[:, 0, 0], ids[:, 0].float())
    assert buf.sample(2, window=6) is None  # windows of another length are never replayed
    buf.push(torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 5, 7))  # a new length starts afresh
    assert len(buf) == 2


def test_buffer_compact_storage():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 300) * 20
    dense = ReplayBuffer(4, dtype="bfloat16")
    dense.push(torch.zeros(2, 7, dtype=torch.long), logits)
    _, z = dense.sample(2, 7, rng=random.Random(0))
    assert z.dtype == torch.float32
    assert (z.sort(0).values - logits.sort(0).values).abs().max() < 20 * 4 * 2 ** -8  # bf16: 8 bits of mantissa
    top = ReplayBuffer(4, dtype="float32", topk=10)
    top.push(torch.zeros(1, 7, dtype=torch.long), logits[:1])
    z = top.decode(top.records[0])                                         # (L, V)
    vals, idx = logits[0].topk(10, -1)
    assert torch.equal(z.gather(-1, idx), vals)                            # the head is kept exactly
    rest = (logits[0].sum(-1) - vals.sum(-1)) / 290
    mask = torch.ones_like(z, dtype=torch.bool).scatter_(-1, idx, False)
    assert torch.allclose(z[mask].view(6, 290), rest[:, None].expand(6, 290))  # the tail is its mean
    per_record = top.records[0].nbytes() - top.records[0].ids.nbytes
    assert per_record == record_bytes(6, 300, "float32", topk=10) < record_bytes(6, 300, "float32")
    assert record_bytes(256, 50277, "float32") * 192 == pytest.approx(9.88e9, rel=1e-3)  # the reference's 9.9 GB


def test_replay_restarts_from_stored_logits(tiny_cfg, monkeypatch):
    model = TextEBT(tiny_cfg.model, s2_think(langevin_std=0.0, rand_alpha_scale=1.0))
    model.train()
    seen = []
    original = model.thinker.train_descent

    def spy(energy, z0, training=True, randomize=None):
        seen.append((energy.input_ids.clone(), z0.clone()))
        return original(energy, z0, training=training, randomize=randomize)

    monkeypatch.setattr(model.thinker, "train_descent", spy)
    first = ids_batch(4, 16)
    out = model(first)
    assert out.metrics["replayed"] == 0 and len(model.replay) == 4
    stored = {tuple(r.ids.tolist()): r.values.float() for r in model.replay.records}
    assert torch.allclose(torch.stack(list(stored.values())), out.thought.final.detach().to(torch.bfloat16).float())
    second = ids_batch(4, 16, seed=1)
    out = model(second)
    ids, z0 = seen[-1]
    assert out.metrics["replayed"] == 2 and ids.shape[0] == 6                 # B + 0.5 B rows
    assert torch.equal(ids[:4], second[:, :-1])                               # fresh rows first
    for row in range(4, 6):                                                   # replayed rows restart from the buffer
        key = next(k for k in stored if torch.equal(torch.tensor(k[:-1]), ids[row]))
        assert torch.equal(z0[row], stored[key])
    assert len(model.replay) == 8
    model(ids_batch(4, 16, seed=2), training=False)                           # evaluation neither reads nor writes
    assert len(model.replay) == 8 and seen[-1][0].shape[0] == 4


# ---- randomisation ------------------------------------------------------------------------------------------------
def test_langevin_only_in_training(tiny_cfg):
    torch.manual_seed(0)
    model = TextEBT(tiny_cfg.model, s2_think(replay_size=0, rand_alpha_scale=1.0, rand_steps=0, rand_steps_min=0))
    ids, z0 = ids_batch(2, 16), torch.randn(2, 16, 256)
    a = model(ids, z0=z0, training=False).thought.final
    b = model(ids, z0=z0, training=False).thought.final
    assert torch.equal(a, b)                                                   # no noise at evaluation
    c = model(ids, z0=z0, training=True).thought.final
    d = model(ids, z0=z0, training=True).thought.final
    assert not torch.allclose(c, d)                                            # noise in training
    from ebt.text.inference import think
    from ebt.thinking import ThinkOptions
    e = think(model, ids[:, :-1], ThinkOptions(), generator=torch.Generator().manual_seed(3)).logits
    f = think(model, ids[:, :-1], ThinkOptions(), generator=torch.Generator().manual_seed(3)).logits
    assert torch.equal(e, f)                                                   # inference: off unless asked


def test_random_alpha_range_and_gradient():
    th = Thinker(ThinkConfig(alpha=10.0, rand_alpha_scale=2.0, learn_alpha=True))
    a = th.random_alpha((64, 32, 1), "cpu")
    assert a.shape == (64, 32, 1)
    assert a.min() >= 5.0 and a.max() <= 20.0 and a.min() < 5.5 and a.max() > 19.0
    assert a.std() > 1.0                                                       # per (sample, position), not per batch
    a.sum().backward()
    assert th.alpha.grad is not None and th.alpha.grad.item() > 0


def test_step_counts(tiny_cfg):
    th = Thinker(ThinkConfig(landscapes=1, rand_steps=2, rand_steps_min=2))
    rng = random.Random(0)
    counts = {len(th.schedule(True, rng)) for _ in range(50)}
    assert counts == {2, 3}                                                    # training: U{2, 3}
    assert th.schedule(False) == [0, 0, 0]                                     # evaluation: R+1
    assert Thinker(ThinkConfig(landscapes=2)).schedule(True) == [0, 1]              # S1: one step per landscape
    assert Thinker(ThinkConfig(landscapes=2, rand_steps=1)).schedule(False) == [0, 1, 1]
    model = TextEBT(tiny_cfg.model, s2_think(replay_size=0))
    random.seed(1)
    steps = {model(ids_batch(2, 16), training=True).metrics["steps"] for _ in range(4)}
    assert steps == {2, 3} and model(ids_batch(2, 16), training=False).metrics["steps"] == 3
    model.train()
    out = model(ids_batch(2, 16), z0=torch.randn(2, 16, 256), training=True, randomize=False)
    assert out.metrics["steps"] == 3                                           # parity: no randomisation


# ---- no detach + truncated back-propagation ----------------------------------------------------------------------
def manual_s2_grads(model, ids, z0):
    """The S2 gradients by the chain rule, written out: earlier steps are constants g_k, so theta only sees the
    final step's second-order term and alpha sees every update through the softmax Jacobians (docs/reference.md §3)."""
    from ebt.models.ar_ebt import ContextEnergy

    x, y = ids[:, :-1], ids[:, 1:]
    alpha = model.thinker.step_size()
    schedule = model.thinker.schedule(False)
    energy = ContextEnergy(model.energy, x)
    ps, gs, z = [], [], z0
    for k in schedule:                                       # forward, with no graph at all
        p = z.softmax(-1).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(energy(p, k).sum(), p)
        ps.append(p.detach()), gs.append(g)
        z = p.detach() - alpha.detach() * g
    delta = torch.autograd.grad(cross_entropy(z.requires_grad_(True), y), z)[0]  # dL/dz_K
    d_alpha = torch.zeros(())
    for i in reversed(range(len(schedule))):
        d_alpha = d_alpha - (delta * gs[i]).sum()
        u = delta
        if i == len(schedule) - 1:                           # the only step with a second-order graph
            p = ps[i].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(energy(p, schedule[i]).sum(), p, create_graph=True)
            params = [q for q in model.energy.parameters()]
            grads = torch.autograd.grad(-(alpha.detach() * (g * delta).sum()), [p] + params, allow_unused=True)
            u = delta + grads[0]                             # dL/dp = delta - alpha * H delta
            theta = {id(q): gq for q, gq in zip(params, grads[1:])}
        delta = ps[i] * (u - (ps[i] * u).sum(-1, keepdim=True))  # softmax Jacobian (symmetric)
    return d_alpha, theta


@pytest.mark.parametrize("steps,rand", [(1, 2), (2, 0)])
def test_s2_gradients_match_manual_chain_rule(tiny_cfg, steps, rand):
    torch.manual_seed(0)
    cfg = s2_think(landscapes=steps, rand_steps=rand, rand_steps_min=min(rand, 2), learn_alpha=True, langevin_std=0.0,
                   rand_alpha_scale=1.0, replay_size=0)
    model = TextEBT(tiny_cfg.model, cfg).double()
    with torch.no_grad():
        for n, q in model.named_parameters():
            if n.endswith("norm.weight"):
                q.add_(0.1 * torch.randn_like(q))
    ids, z0 = ids_batch(2, 16), torch.randn(2, 16, 256, dtype=torch.float64)
    out = model(ids, z0=z0, training=True, randomize=False)
    assert len(out.thought.candidates) == (3 if rand else 2)
    out.loss.backward()
    d_alpha, theta = manual_s2_grads(model, ids, z0)
    assert torch.allclose(model.thinker.alpha.grad.reshape(()), d_alpha, rtol=1e-9)
    for n, q in model.energy.named_parameters():
        ref = theta[id(q)]
        ref = torch.zeros_like(q) if ref is None else ref
        assert torch.allclose(q.grad, ref, rtol=1e-8, atol=1e-14), n
    if steps == 2:  # the step-0 time embedding only enters through the constant g_0
        te = model.energy.transformer.time_embeddings.weight.grad
        assert torch.all(te[0] == 0) and te[1].abs().sum() > 0
    # detaching between steps (the S1 chain) gives a different alpha gradient: S2 must not detach
    model.zero_grad()
    model.thinker.cfg = dataclasses.replace(cfg, detach=True)
    model(ids, z0=z0, training=True, randomize=False).loss.backward()
    assert not torch.allclose(model.thinker.alpha.grad.reshape(()), d_alpha, rtol=1e-3)


def test_truncation_leaves_earlier_steps_out_of_parameter_gradient(tiny_cfg):
    """theta's S2 gradient equals that of one final step started from the (constant) penultimate state."""
    torch.manual_seed(1)
    cfg = s2_think(rand_steps=2, rand_steps_min=2, langevin_std=0.0, rand_alpha_scale=1.0, replay_size=0)
    model = TextEBT(tiny_cfg.model, cfg).double()
    ids, z0 = ids_batch(2, 16), torch.randn(2, 16, 256, dtype=torch.float64)
    out = model(ids, z0=z0, training=True, randomize=False)
    out.loss.backward()
    full = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
    model.zero_grad()
    one = dataclasses.replace(cfg, rand_steps=0, rand_steps_min=0)            # a single step
    model.thinker.cfg = one
    out1 = model(ids, z0=out.thought.candidates[-2].detach(), training=True, randomize=False)
    assert torch.allclose(out1.thought.final, out.thought.final)
    out1.loss.backward()
    for n, q in model.named_parameters():
        if n in full:
            assert torch.allclose(full[n], q.grad, rtol=1e-9, atol=1e-15), n


# ---- presets, trainer and the ablation CLI ----------------------------------------------------------------------
def test_presets():
    from ebt.presets import PRESETS, lm_s2_reference

    cfg = PRESETS["lm-tiny-s2"]()
    t = cfg.think
    assert (t.detach, t.truncate, t.learn_alpha, t.landscapes) == (False, True, False, 1)
    assert (t.langevin_std, t.rand_alpha_scale, t.rand_steps, t.rand_steps_min) == (3.0, 2.0, 2, 2)
    assert (t.replay_size, t.replay_frac) == (192, 0.5)
    ref = lm_s2_reference()
    assert (ref.think.alpha, ref.optim.lr, ref.model.vocab_size, ref.model.context) == (5.0, 0.0012, 50277, 256)


def test_ablation_variants(tmp_path):
    from ebt.experiments.s2_ablation import AblationSettings, base_config, variant_config

    base = base_config(AblationSettings(quick=True, steps=3), tmp_path)
    think = {k: variant_config(base, k, tmp_path).think for k in ("full", "no-rand-alpha", "no-rand-steps",
                                                                   "no-langevin", "no-replay", "s1")}
    assert think["full"] == base.think and base.think.langevin_std == 3.0
    assert think["no-rand-alpha"].rand_alpha_scale == 1.0
    assert Thinker(think["no-rand-steps"]).schedule(True) == [0, 0, 0] == Thinker(think["full"]).schedule(False)
    assert think["no-langevin"].langevin_std == 0.0 and think["no-replay"].replay_size == 0
    assert think["s1"].detach and not think["s1"].truncate and think["s1"].landscapes == 2
    for k, t in think.items():  # each variant changes exactly its own component
        diff = {f for f in dataclasses.asdict(t) if getattr(t, f) != getattr(base.think, f)}
        assert k == "s1" or len(diff) == (0 if k == "full" else 1), (k, diff)
