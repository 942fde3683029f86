"""Thinking: prediction by gradient descent on the energy. The only module that differentiates an energy with
respect to candidates.

Notation (the paper's symbols; `Thinker.step` is one update, `Thinker.descend` the loop around it):
    z      candidates: logits (B, L, V) for text; the values themselves (B, 1, C*H*W) for continuous data
    p      the distribution descended on: softmax(z + eta) for text, z + eta for continuous candidates,
           with Langevin noise eta ~ N(0, langevin_std^2) (usually 0)
    E      energy(p, k): one energy per position (B, L) on landscape k (the step-embedding row)
    alpha  the step size: the learnable scalar (shape (1,)), or (B, L, 1) random step sizes in System 2 training
One step on landscape k:  p = softmax(z + eta);  E = energy(p, k);  z' = p - alpha dE/dp
The update lives in probability space, as in the reference implementation (docs/reference.md). In training the
gradient is taken with create_graph=True so the loss can be back-propagated through the descent (exact
second-order gradients).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ebt import noise
from ebt.config import ThinkConfig
from ebt.errors import NonFinite, UserError

EnergyFn = Callable[[Tensor, int], Tensor]  # (p (B, L, V), landscape index) -> energies (B, L)
StepHook = Callable[[int, Tensor, Tensor, Tensor], "tuple[Tensor, Tensor]"]  # (step, z, energies, alpha)
SELECTIONS = ("min", "max", "max_gap")
NON_FINITE = ("non-finite energy gradient while thinking: lower the step size (think.alpha, --alpha) or, in training, "
              "the learning rate")


@dataclass(kw_only=True)
class ThinkOptions:
    """How to think at inference (System 2): the one options type of `think`, `generate` and the evaluators.
    The training recipe is `ThinkConfig`; these settings change only how a trained model is run."""
    steps: Optional[int] = None
    """Steps per trained landscape (None: the trained schedule). More steps = thinking longer."""
    final_landscape_only: bool = False
    """Apply the extra steps to the last landscape only."""
    samples: int = 1
    """Candidates per position (best-of-N self-verification)."""
    select: str = "min"
    """How to pick among samples: lowest final energy (min), highest (max), or largest drop (max_gap)."""
    alpha: Optional[float] = None
    """Absolute step size (None: the trained alpha)."""
    alpha_scale: float = 1.0
    langevin_std: float = 0.0
    """Gaussian noise on the candidates at each step (or only the first, with langevin_first_only)."""
    langevin_first_only: bool = False
    accept_lower: bool = False
    """Accept a step at a position only where it lowers that position's energy (monotone descent)."""
    tol: Optional[float] = None
    """Adaptive compute: stop refining a position once its energy changes by less than tol."""
    init_scale: float = 1.0
    """(text) Scale of the starting noise: wider starts keep best-of-N candidates apart."""
    entropy_weight: float = 0.0
    """(text) Best-of-N scores a candidate by its final energy + entropy_weight x its entropy (nats)."""
    alpha_spread: float = 1.0
    """(text) Best-of-N over step sizes: candidate j of N descends with alpha x s^(2j/(N-1) - 1), from alpha/s to
    alpha*s (System 2 trains on random step sizes in such a range), and the selection picks per position."""

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise UserError(f"thinking steps must be >= 1, got {self.steps}")
        if self.samples < 1:
            raise UserError(f"samples must be >= 1, got {self.samples}")
        if self.select not in SELECTIONS:
            raise UserError(f"select={self.select!r} is not known: use one of {', '.join(SELECTIONS)}")
        if self.tol is not None and not self.tol >= 0:
            raise UserError(f"tolerance must be >= 0, got {self.tol}")
        if not 0 <= self.langevin_std < float("inf"):
            raise UserError(f"Langevin noise must be a finite number >= 0, got {self.langevin_std}")
        if self.alpha is not None and not 0 < self.alpha < float("inf"):
            raise UserError(f"alpha must be a finite number > 0, got {self.alpha}")
        if not 0 < self.alpha_scale < float("inf"):
            raise UserError(f"alpha scale must be a finite number > 0, got {self.alpha_scale}")
        if not 0 < self.init_scale < float("inf"):
            raise UserError(f"init scale must be a finite number > 0, got {self.init_scale}")
        if not 0 <= self.entropy_weight < float("inf"):
            raise UserError(f"entropy weight must be a finite number >= 0, got {self.entropy_weight}")
        if not 1 <= self.alpha_spread < float("inf"):
            raise UserError(f"alpha spread must be a finite number >= 1, got {self.alpha_spread}")
        if (self.entropy_weight or self.alpha_spread != 1) and self.samples < 2:
            raise UserError("entropy weight and alpha spread choose among candidates: give --samples 2 or more")
        if self.entropy_weight and self.select != "min":
            raise UserError("entropy weight adds to the lowest-energy selection: use it with --select min")


def select_samples(initial: Tensor, final: Tensor, how: str) -> Tensor:
    """Index of the chosen sample per position: initial/final energies (B, N, ...) -> (B, ...).

    min: lowest final energy (the model's own verification); max: highest; max_gap: largest initial - final drop.
    """
    if how == "min":
        return final.argmin(dim=1)
    if how == "max":
        return final.argmax(dim=1)
    return (initial - final).argmax(dim=1)


@dataclass
class StepOutput:
    """What one `Thinker.step` produced."""
    candidates: Tensor
    """The updated candidates z' = p - alpha dE/dp, shaped like p."""
    energy: Tensor
    """Energy of each position before the update (B, L)."""


@dataclass
class Thought:
    """What a descent produced. Lists have one entry per executed step."""
    candidates: list[Optional[Tensor]]
    """Candidates after each step (text: raw logits (B, L, V)); earlier entries are None with Chain(keep_all=False)."""
    energies: list[Tensor]
    """Energy of each position before each update, (B, L)."""
    nfe: int = 0
    """Energy forward passes used (each descent step also costs one input-gradient backward)."""
    steps_used: Optional[Tensor] = None
    """Steps each position actually took (B, L): fewer than scheduled where adaptive stopping froze it or
    accept-lower refused a step."""
    schedule: list[int] = field(default_factory=list)

    @property
    def final(self) -> Tensor:
        return self.candidates[-1]


@dataclass(frozen=True)
class Chain:
    """How the steps of one descent connect: what training needs. Inference uses the defaults."""
    create_graph: bool = False
    """Keep the second-order graph (training): the loss is back-propagated through the descent."""
    detach: bool = True
    """Cut the graph between steps (System 1); False keeps the whole chain (System 2)."""
    truncate: bool = False
    """Second-order graph on the final step only (System 2)."""
    keep_all: bool = True
    """Keep every step's candidates in `Thought.candidates`; False keeps only the final ones (at V = 50k each is
    1.6 GB) and lets a step free its input candidates as soon as their distribution is formed."""
    release_start: bool = False
    """(with keep_all=False and detached steps) z0 is the caller's scratch, never read again: its storage is freed
    after the first step's distribution is formed (the callers' frames would otherwise keep it alive)."""


def trained_schedule(c: ThinkConfig, training: bool, rng: Optional[random.Random] = None) -> list[int]:
    """The landscape index of every step of the trained recipe (docs/reference.md §4): each landscape once, or with
    think.rand_steps = R, U{rand_steps_min..R+1} times per landscape in training and R+1 times on the last landscape
    at evaluation."""
    if c.rand_steps <= 0:
        return list(range(c.landscapes))
    if not training:
        return list(range(c.landscapes - 1)) + [c.landscapes - 1] * (c.rand_steps + 1)
    rng = rng or random
    low = max(c.rand_steps_min, 1)
    return [k for k in range(c.landscapes) for _ in range(rng.randint(low, c.rand_steps + 1))]


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

    # ---- schedules: the landscape index of every step ----------------------------------------------------------
    def schedule(self, training: bool, rng: Optional[random.Random] = None) -> list[int]:
        return trained_schedule(self.cfg, training, rng)

    def final_landscape_steps(self) -> int:
        """Steps the trained evaluation schedule takes on the last landscape (1, or rand_steps + 1 in System 2)."""
        return self.schedule(training=False).count(self.cfg.landscapes - 1)

    def think_longer(self, extra: int, **options) -> ThinkOptions:
        """Inference options for `extra` more steps than the trained schedule, on the last landscape (the paper's
        "thinking longer"), with any other `options` (samples, langevin_std, ...)."""
        return ThinkOptions(steps=self.final_landscape_steps() + extra, final_landscape_only=True, **options)

    def inference_schedule(self, steps: Optional[int] = None, final_landscape_only: bool = False) -> list[int]:
        """`steps` per landscape (thinking longer reuses the trained indices), or only on the last landscape."""
        if steps is None:
            return self.schedule(training=False)
        n = self.cfg.landscapes
        if final_landscape_only:
            return list(range(n - 1)) + [n - 1] * steps
        return [k for k in range(n) for _ in range(steps)]

    def options_alpha(self, opts: "ThinkOptions", device) -> Tensor:
        """The step size of inference options: the trained alpha (or opts.alpha) times opts.alpha_scale."""
        alpha = self.step_size() if opts.alpha is None else torch.tensor(opts.alpha, device=device)
        return alpha * opts.alpha_scale

    @property
    def steps_from_logits(self) -> bool:
        """Whether a step updates the logits z (think.step_from=logits: z' = z - alpha dE/dp) rather than the
        distribution (the reference: z' = p - alpha dE/dp)."""
        return self.softmax and self.cfg.step_from == "logits"

    def random_alpha(self, shape: tuple[int, ...], device) -> Tensor:
        """alpha ~ U(alpha/s, alpha*s) per (sample, position), shape (B, L, 1); keeps alpha's gradient."""
        s = self.cfg.rand_alpha_scale
        u = noise.rand(shape, device=device)  # per sample inside noise.per_sample (world-size invariant)
        return self.step_size() * (1.0 / s + u * (s - 1.0 / s))

    # ---- one step ----------------------------------------------------------------------------------------------
    def distribution(self, z: Tensor, langevin_std: float = 0.0) -> Tensor:
        """p = softmax(z + eta) (text) or z + eta (continuous), eta ~ N(0, langevin_std^2)."""
        if langevin_std > 0:
            z = z + noise.randn_like(z) * langevin_std
        return z.softmax(-1) if self.softmax else z

    def step(self, energy: EnergyFn, p: Tensor, landscape: int, alpha: Tensor,
             create_graph: bool = False, inference: bool = False, base: Optional[Tensor] = None) -> StepOutput:
        """One update z' = base - alpha dE/dp of candidates with distribution p (from `distribution`); base is p
        itself (the reference) or, for a descent in logit space (think.step_from=logits), the logits z.

        create_graph=True keeps the second-order graph (training). The energy is detached otherwise.
        inference=True: nothing will be differentiated through this step (the caller runs without grad), and the
        caller checks the final candidates for non-finite values (`descend` does) instead of every step's gradient."""
        base = p if base is None else base
        if inference and not p.requires_grad and getattr(energy, "explicit", False):
            # 0. the model's explicit forward and hand-derived backward give E and dE/dx (B, L, D) at x = p M (+ b) without
            #    an autograd tape (models/explicit.py); the same update as 1. A non-finite gradient makes the candidates
            #    non-finite from here on, so one check at the end of the descent finds it (a host sync per step saved)
            with torch.no_grad():
                e, dx = energy.energy_and_grad(p, landscape)
                return StepOutput(energy.update(base, dx, alpha), e)
        with torch.enable_grad():
            if self.softmax and not p.requires_grad and hasattr(energy, "from_embedding"):
                # 1. constant candidates (System 1, inference): differentiate w.r.t. the (B, L, D) embedding
                #    x = p M; the (B, L, V) side p - alpha (dE/dx) M^T is an exact Function that stores no
                #    (B, L, V) tensor (ops/vocab.py), so p needs no gradient and gets no .grad
                x = energy.embed(p)
                if not x.requires_grad:  # frozen weights
                    x.requires_grad_(True)
                e = energy.from_embedding(x, landscape)                                   # (B, L)
                (dx,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)       # (B, L, D)
                finite = torch.isfinite(dx).all()   # dE/dp = dx M^T: checking the (B, L, D) factor is enough
                z = energy.update(base, dx, alpha)
            else:
                # 1. differentiable candidates (System 2 chains) or continuous ones: the gradient w.r.t. p itself
                if not p.requires_grad:
                    p.requires_grad_(True)
                e = energy(p, landscape)                                                  # (B, L)
                (g,) = torch.autograd.grad(e.sum(), p, create_graph=create_graph)        # like p
                finite = torch.isfinite(g).all()
                z = base - alpha * g
        # 2. a diverged model or step size gives non-finite gradients: stop with the fix rather than descend on NaN
        if not finite:
            raise NonFinite(NON_FINITE)
        return StepOutput(z, e if create_graph else e.detach())

    @torch.no_grad()
    def final_energy(self, energy: EnergyFn, z: Tensor, landscape: int) -> Tensor:
        """Energy of candidates z at their final state (B, L): one more forward pass (best-of-N selection)."""
        return energy(self.distribution(z.detach()), landscape)

    # ---- descents ----------------------------------------------------------------------------------------------
    def train_descent(self, energy: EnergyFn, z0: Tensor, training: bool = True,
                      randomize: Optional[bool] = None, on_step: Optional[StepHook] = None,
                      keep_all: bool = True, release_start: bool = False) -> Thought:
        """The training-time descent (also the validation loss's, without randomisation or a second-order graph).

        training=True: create_graph on every step (S1) or on the final step only (truncate, S2).
        randomize (default: = training): random step count, random alpha and Langevin noise as configured; without
        it the evaluation schedule runs with the plain alpha and no noise, which is what the reference's validation
        loss computes (less its Langevin noise, which it forgets to turn off).
        """
        c = self.cfg
        randomize = training if randomize is None else randomize
        schedule = self.schedule(randomize, noise.batch_rng())
        alpha = None
        if randomize and c.rand_alpha_scale > 1:
            alpha = self.random_alpha(z0.shape[:-1] + (1,), z0.device).to(z0.dtype)   # (B, L, 1)
        options = ThinkOptions(langevin_std=c.langevin_std if randomize else 0.0)
        chain = Chain(create_graph=training, detach=c.detach, truncate=c.truncate, keep_all=keep_all,
                      release_start=release_start)
        return self.descend(energy, z0, schedule, options, alpha, chain, on_step)

    def descend(self, energy: EnergyFn, z0: Tensor, schedule: list[int], options: Optional[ThinkOptions] = None,
                alpha: Optional[Tensor] = None, chain: Chain = Chain(),
                on_step: Optional[StepHook] = None) -> Thought:
        """Run `schedule` from z0. alpha: the step size tensor (default: the trained one, or options.alpha, times
        options.alpha_scale). on_step(i, z, energies, alpha) -> (z, energies), if given, sees each step's result
        before it is recorded and may replace it (ebt.text.stepwise takes the step's gradient there)."""
        opts = options or ThinkOptions()
        if alpha is None:
            alpha = self.options_alpha(opts, z0.device)
        out = Thought(candidates=[], energies=[], schedule=list(schedule))
        z = z0
        if not chain.detach and chain.create_graph and not z.requires_grad:
            z = z.detach().requires_grad_(True)  # System 2: the chain starts at a differentiable leaf
        # whether z is read again after its distribution is formed (kept, compared, or needed as is)
        from_logits = self.steps_from_logits
        hold = chain.keep_all or not self.softmax or opts.accept_lower or opts.tol is not None or from_logits
        steps_used, every = None, 0   # (B, L) steps of positions that refused some, plus steps every position took
        settled = _Settling(opts.tol)
        inference = not torch.is_grad_enabled() and not chain.create_graph
        moved_by_energy = opts.accept_lower or opts.tol is not None   # the energies decide which positions move
        with torch.enable_grad():
            for i, k in enumerate(schedule):
                if not chain.keep_all and out.candidates:
                    out.candidates[-1] = None   # keep only the final candidates: release the previous step's
                if chain.detach or not chain.create_graph:
                    z = z.detach()
                p = self.distribution(z, opts.langevin_std if i == 0 or not opts.langevin_first_only else 0.0)
                if not hold:
                    z = None   # only p is needed from here: free the (B, L, V) logits during the step
                    if i == 0 and chain.release_start and chain.detach:
                        z0.untyped_storage().resize_(0)   # the caller's scratch start, never read again
                graph = chain.create_graph and (i == len(schedule) - 1 or not chain.truncate)
                s = self.step(energy, p, k, alpha, create_graph=graph, inference=inference,
                              base=z if from_logits else None)
                p = None       # (B, L, V): not needed again, free before on_step's backward
                out.nfe += 1
                new_z = s.candidates if chain.create_graph else s.candidates.detach()
                moved = None   # positions that take the step (None: all)
                if inference and moved_by_energy and not torch.isfinite(s.candidates).all():
                    raise NonFinite(NON_FINITE)   # before accept-lower or settling could put back the old candidates
                if opts.accept_lower:   # greedy: keep the old state where the proposal does not lower the energy
                    moved = self.final_energy(energy, new_z, k) < s.energy.detach()
                    out.nfe += 1
                if opts.tol is not None:
                    moved = settled.update(s.energy, moved)
                if moved is not None:
                    new_z = torch.where(moved[..., None], new_z, z)
                if moved is None:
                    every += 1
                else:
                    steps_used = moved.long() if steps_used is None else steps_used + moved.long()
                z, e = new_z, s.energy
                new_z = s = None   # one reference: the next step frees z as soon as its distribution exists
                if on_step is not None:
                    z, e = on_step(i, z, e, alpha)
                out.candidates.append(z)
                out.energies.append(e)
                if settled.all_settled():
                    break  # adaptive compute: every position has settled, stop spending forward passes
        out.steps_used = (torch.full(z0.shape[:-1], every, dtype=torch.long, device=z0.device) if steps_used is None
                          else steps_used + every)
        if inference and out.candidates and not torch.isfinite(out.candidates[-1]).all():
            raise NonFinite(NON_FINITE)
        return out


class _Settling:
    """Adaptive compute: a position stays active until its energy changes by less than `tol` between two steps."""

    def __init__(self, tol: Optional[float]):
        self.tol, self.active, self.previous = tol, None, None

    def update(self, energy: Tensor, moved: Optional[Tensor]) -> Tensor:
        """The positions that still move (B, L) bool, given this step's energies and `moved` (None: all)."""
        e = energy.detach()
        if self.active is None:
            self.active = torch.ones_like(e, dtype=torch.bool)
        if self.previous is not None:
            self.active = self.active & ((e - self.previous).abs() >= self.tol)
        self.previous = e
        return self.active if moved is None else moved & self.active

    def all_settled(self) -> bool:
        return self.active is not None and not bool(self.active.any())
