"""Thinking: prediction by gradient descent on the energy. The only module that differentiates an energy with
respect to candidates.

One step at landscape k (REFERENCE_SPEC §1.5), for candidate logits z (B, L, V):
    p = softmax(z + langevin noise);  E = energy(p, k) (B, L);  g = dE/dp;  z <- p - alpha * g
The update lives in probability space, as in the reference. For continuous candidates (images, latents) the
softmax is skipped (`softmax=False`): x <- x - alpha * dE/dx, with energies of any shape (summed for the gradient). In training the gradient is taken with
`create_graph=True` so the loss can be back-propagated through the descent (exact second-order gradients).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ebt import noise
from ebt.config import ThinkConfig

EnergyFn = Callable[[Tensor, int], Tensor]  # (probs (B, L, V), landscape index) -> energies (B, L)
StepHook = Callable[[int, Tensor, Tensor, Tensor], "tuple[Tensor, Tensor]"]  # (step, logits, energies, alpha)


@dataclass
class Thought:
    """What a descent produced. Lists have one entry per executed step."""
    logits: list[Tensor]
    """Raw candidate logits after each step, (B, L, V)."""
    energies: list[Tensor]
    """Energy of each position before each update, (B, L)."""
    nfe: int = 0
    """Energy forward passes used (each descent step also costs one input-gradient backward)."""
    final_energy: Optional[Tensor] = None
    """Energy at the final state (B, L), when asked for (self-verification)."""
    steps_used: Optional[Tensor] = None
    """Steps each position actually took (B, L) — fewer than scheduled when adaptive stopping froze it."""
    schedule: list[int] = field(default_factory=list)

    @property
    def final(self) -> Tensor:
        return self.logits[-1]


@dataclass
class DescentOptions:
    """Inference-time knobs (System 2 thinking); the training recipe is set by ThinkConfig."""
    langevin_std: float = 0.0
    langevin_first_only: bool = False
    alpha: Optional[float] = None
    """Absolute step size override (None: the trained alpha)."""
    alpha_scale: float = 1.0
    accept_lower: bool = False
    """Accept a step at a position only where it lowers that position's energy."""
    tol: Optional[float] = None
    """Adaptive compute: freeze a position once |E_k - E_{k-1}| < tol."""
    final_energy: bool = False
    """Also evaluate the energy of the final state (needed to compare best-of-N candidates)."""


class Thinker(nn.Module):
    """Holds the learnable step size alpha (shape (1,): FSDP2 rejects 0-d parameters) and runs descents."""

    def __init__(self, cfg: ThinkConfig, softmax: bool = True):
        super().__init__()
        self.cfg = cfg
        self.softmax = softmax
        """Text candidates are logits normalised by a softmax; continuous candidates are used as they are."""
        self.alpha = nn.Parameter(torch.tensor([float(cfg.alpha)]), requires_grad=cfg.learn_alpha)

    def step_size(self) -> Tensor:
        return self.alpha.clamp(min=1e-4)  # the gradient passes through the clamp, as in the reference

    # ---- schedules ------------------------------------------------------------------------------------------
    def schedule(self, training: bool, rng: Optional[random.Random] = None) -> list[int]:
        """Landscape index of every step (REFERENCE_SPEC §1.7)."""
        c = self.cfg
        if c.rand_steps <= 0:
            return list(range(c.steps))
        if not training:  # the last landscape repeated R+1 times, the others once
            return list(range(c.steps - 1)) + [c.steps - 1] * (c.rand_steps + 1)
        rng = rng or random
        low = max(c.rand_steps_min, 1)
        return [k for k in range(c.steps) for _ in range(rng.randint(low, c.rand_steps + 1))]

    def inference_schedule(self, steps: Optional[int] = None, final_landscape_only: bool = False) -> list[int]:
        """`steps` per landscape (thinking longer reuses the trained indices), or only on the last landscape."""
        if steps is None:
            return self.schedule(training=False)
        n = self.cfg.steps
        if final_landscape_only:
            return list(range(n - 1)) + [n - 1] * steps
        return [k for k in range(n) for _ in range(steps)]

    def random_alpha(self, shape: tuple[int, ...], device) -> Tensor:
        """alpha ~ U(alpha/s, alpha*s) per (sample, position), shape (B, L, 1); keeps alpha's gradient."""
        s = self.cfg.rand_alpha_scale
        u = noise.rand(shape, device=device)  # per sample inside noise.per_sample (world-size invariant)
        return self.step_size() * (1.0 / s + u * (s - 1.0 / s))

    # ---- training descent -----------------------------------------------------------------------------------
    def train_descent(self, energy: EnergyFn, z0: Tensor, training: bool = True,
                      randomize: Optional[bool] = None, on_step: Optional[StepHook] = None,
                      keep_all: bool = True, release_start: bool = False) -> Thought:
        """The training-time descent (also used for validation loss, without randomisation or a second-order graph).

        training=True: create_graph on every step (S1) or on the final step only (truncate, S2).
        randomize (default: = training): random step count, random alpha and Langevin noise as configured;
        without it the evaluation schedule is used with the plain alpha and no noise (REFERENCE_SPEC §1.7), which
        is what the reference's validation loss computes (less its Langevin noise, which it forgets to turn off).
        training=False: no second-order graph.
        """
        c = self.cfg
        randomize = training if randomize is None else randomize
        schedule = self.schedule(randomize, noise.batch_rng())
        alpha = None
        if randomize and c.rand_alpha_scale > 1:
            alpha = self.random_alpha(z0.shape[:-1] + (1,), z0.device).to(z0.dtype)  # (B, L, 1)
        return self.descend(energy, z0, schedule, create_graph=training, alpha=alpha,
                            langevin_std=c.langevin_std if randomize else 0.0,
                            detach=c.detach, truncate=c.truncate, on_step=on_step, keep_all=keep_all,
                            release_start=release_start)

    # ---- the loop -------------------------------------------------------------------------------------------
    def descend(self, energy: EnergyFn, z0: Tensor, schedule: list[int], *, create_graph: bool = False,
                alpha: Optional[Tensor] = None, langevin_std: float = 0.0, detach: bool = True,
                truncate: bool = False, options: Optional[DescentOptions] = None,
                on_step: Optional[StepHook] = None, keep_all: bool = True, release_start: bool = False) -> Thought:
        """Run `schedule`. on_step(i, logits, energies, alpha) -> (logits, energies), if given, sees each step's
        result and the step size it used before they are recorded, and may replace them (ebt.stepwise takes the
        step's gradient there and detaches). keep_all=False keeps only the final logits (earlier entries of
        `Thought.logits` are None): at V = 50k each is 1.6 GB. release_start=True (with keep_all=False and detached
        steps) says z0 is scratch that the caller never reads again: its storage is freed after the first step's
        probabilities are formed (the callers' frames would otherwise keep it alive through every step)."""
        opts = options or DescentOptions(langevin_std=langevin_std)
        if alpha is None:
            alpha = self.step_size() if opts.alpha is None else torch.tensor(opts.alpha, device=z0.device)
            alpha = alpha * opts.alpha_scale
        out = Thought(logits=[], energies=[], schedule=list(schedule))
        z = z0
        if not detach and create_graph and not z.requires_grad:
            z = z.detach().requires_grad_(True)  # S2: the chain starts at a differentiable leaf
        active = None
        steps_used = torch.zeros(z0.shape[:-1], dtype=torch.long, device=z0.device)
        prev_energy = None
        with torch.enable_grad():
            for i, k in enumerate(schedule):
                if not keep_all and out.logits:
                    out.logits[-1] = None   # keep only the final logits: release the previous step's (B, L, V)
                last = i == len(schedule) - 1
                graph = create_graph and (last or not truncate)
                if detach or not create_graph:
                    z = z.detach()
                noisy = z
                if opts.langevin_std > 0 and (i == 0 or not opts.langevin_first_only):
                    noisy = z + noise.randn_like(z) * opts.langevin_std
                p = noisy.softmax(-1) if self.softmax else noisy
                if not keep_all and self.softmax and not (opts.accept_lower or opts.tol is not None):
                    z = noisy = None   # only p is needed from here: free the (B, L, V) logits during the step
                    if i == 0 and release_start and detach:
                        z0.untyped_storage().resize_(0)   # the caller's scratch start, never read again
                if self.softmax and not p.requires_grad and hasattr(energy, "from_embedding"):
                    # constant candidates (S1, inference): differentiate w.r.t. the (B, L, D) embedding x = p M and
                    # form p - alpha dE/dp = p - alpha (dE/dx) M^T in an exact Function that stores no (B, L, V)
                    # tensor (models/vocab.py); p itself then needs no gradient and no .grad
                    x = energy.embed(p)
                    if not x.requires_grad:  # frozen weights
                        x.requires_grad_(True)
                    e = energy.from_embedding(x, k)                            # (B, L)
                    (dx,) = torch.autograd.grad(e.sum(), x, create_graph=graph)  # (B, L, D)
                    finite = torch.isfinite(dx).all()   # dE/dp = dx M^T: checking the (B, L, D) factor is enough
                    new_z = energy.update(p, dx, alpha)
                    p = noisy = None   # (B, L, V) each: not needed again, free before the step's backward
                else:
                    if not p.requires_grad:
                        p.requires_grad_(True)
                    e = energy(p, k)                                           # (B, L)
                    (g,) = torch.autograd.grad(e.sum(), p, create_graph=graph)  # (B, L, V)
                    finite = torch.isfinite(g).all()
                    new_z = p - alpha * g
                if not finite:
                    raise FloatingPointError("non-finite energy gradient: lower think.alpha or the learning rate")
                out.nfe += 1
                if not create_graph:
                    new_z = new_z.detach()
                if not graph:
                    e = e.detach()
                keep = None
                if opts.accept_lower:  # greedy: keep the old state where the proposal does not lower the energy
                    with torch.no_grad():
                        proposed = energy(new_z.softmax(-1) if self.softmax else new_z, k)
                    out.nfe += 1
                    keep = proposed >= e.detach()
                if opts.tol is not None:
                    if active is None:
                        active = torch.ones_like(steps_used, dtype=torch.bool)
                    if prev_energy is not None:
                        active = active & ((e.detach() - prev_energy).abs() >= opts.tol)
                    prev_energy = e.detach()
                    keep = ~active if keep is None else (keep | ~active)
                if keep is not None:
                    new_z = torch.where(keep[..., None], z, new_z)
                    steps_used += (~keep).long()
                else:
                    steps_used += 1
                z, new_z = new_z, None   # one reference: the next step frees it as soon as its probabilities exist
                if on_step is not None:
                    z, e = on_step(i, z, e, alpha)
                out.logits.append(z)
                out.energies.append(e)
                if active is not None and not active.any():
                    break  # adaptive compute: every position has settled, stop spending forward passes
            if opts.final_energy:
                with torch.no_grad():
                    zf = z.detach()
                    out.final_energy = energy(zf.softmax(-1) if self.softmax else zf, schedule[len(out.logits) - 1])
                out.nfe += 1
        out.steps_used = steps_used
        return out
