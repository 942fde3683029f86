"""System 2 thinking at inference for the text EBT: more steps, best-of-N self-verification, accept-lower,
Langevin noise and adaptive per-position stopping, on top of the one descent loop in `ebt.thinking`; and the KV
cache of the observed stream that generation extends token by token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ebt.errors import UserError
from ebt.models.ar_ebt import ContextEnergy
from ebt.models.backbone import Observed
from ebt.models.layers import frozen_weights
from ebt.thinking import ThinkOptions, select_samples
from ebt.training.devices import check_fits


@dataclass
class ThinkResult:
    logits: Tensor
    """Chosen final logits (B, L, V)."""
    energies: Tensor
    """Energy before each step of the chosen sample, (steps, B, L)."""
    final_energy: Optional[Tensor]
    """Energy of the chosen final state (B, L); None when think(final_energy=False) skipped that extra pass."""
    steps_used: Tensor
    """Steps each position took (B, L)."""
    nfe: int
    """Energy forward passes per position (all samples together; each descent step adds one input-gradient)."""
    trace: Optional[dict] = None
    """With think(trace=True): "logits" (steps, B, N, L, V) every sample's candidates after each step, "energies"
    (steps, B, N, L) every sample's energy before each step,
    "final_energy" (B, N, L) every sample's final energy, "pick" (B, L) the chosen sample (the thinking explorer)."""


@dataclass
class Prediction:
    """Next-token logits from a model's `predict` / `next_logits` or a decoder (`text/decoding.py`), with what they
    cost."""
    logits: Tensor
    """(B, S, V) from `predict`, (B, V) from `next_logits` and decoders."""
    nfe: int = 1
    """Forward passes per predicted position (an EBT's thinking costs several)."""
    thought: Optional[ThinkResult] = None
    """The EBT's energies, steps used and chosen samples; None for the Transformer++."""


def start_logits(model, rows: int, length: int, opts: ThinkOptions, device, generator=None) -> Tensor:
    """The descent's random start (rows, length, V): the model's initial logits times opts.init_scale, in the
    weights' dtype (float32 under autocast, where float32 candidates meet half-precision weights as in training)."""
    z0 = model.initial_logits(rows, length, device, generator)
    if opts.init_scale != 1.0:
        z0 = z0 * opts.init_scale
    if not torch.is_autocast_enabled(z0.device.type):
        z0 = z0.to(model.energy.embeddings.weight.dtype)
    return z0


@torch.no_grad()
def think(model, input_ids: Tensor, opts: Optional[ThinkOptions] = None, obs: Optional[dict] = None,
          start: int = 0, length: Optional[int] = None, generator: Optional[torch.Generator] = None,
          z0: Optional[Tensor] = None, final_energy: bool = True, trace: bool = False) -> ThinkResult:
    """Predict next-token logits for contexts input_ids (B, S) by descending the energy.

    By default every position 0..S-1 is predicted (as in training). With a KV cache `obs` ({step key: Observed}
    for the whole context) and `start`, only positions start..start+length-1 are predicted. A given start z0
    (B * samples, L, V) is used as it is (options.init_scale scales only the drawn one).
    """
    opts = opts or ThinkOptions()
    B = input_ids.shape[0]
    L = length if length is not None else input_ids.shape[1] - start
    N = opts.samples
    thinker, energy_model = model.thinker, model.energy
    # the descent keeps a few (B*N, L, V) tensors alive at once (candidates, distribution, update)
    dtype = energy_model.embeddings.weight.dtype
    check_fits(4.0 * B * N * L * energy_model.cfg.vocab_size * dtype.itemsize, input_ids.device,
               f"thinking with {N} samples per position")
    fn = ContextEnergy(energy_model, input_ids, start=start)
    if obs is not None:
        fn.cache.update(obs)
    if z0 is not None and z0.shape[0] != B * N:
        raise UserError(f"z0 has {z0.shape[0]} rows; expected batch x samples = {B * N}")
    final_energy = final_energy or N > 1  # selecting among samples needs their final energies
    for key in ([None] if not energy_model.context_depends_on_step else range(energy_model.num_landscapes)):
        fn.observed(0 if key is None else key)  # fill the cache before repeating it for the samples
    if N > 1:
        fn.cache = {k: o.repeat(N) for k, o in fn.cache.items()}
    if z0 is None:  # rows b*N .. b*N+N-1 are the N candidates of context b
        z0 = start_logits(model, B * N, L, opts, input_ids.device, generator)
    schedule = thinker.inference_schedule(opts.steps, opts.final_landscape_only)
    alpha = None
    if opts.alpha_spread != 1.0 and N > 1:   # candidate j of every context: alpha x s^(2j/(N-1) - 1)
        base = thinker.step_size() if opts.alpha is None else torch.tensor(opts.alpha, device=z0.device)
        powers = torch.linspace(-1.0, 1.0, N, device=z0.device, dtype=torch.float64)
        factors = (opts.alpha_spread ** powers).to(z0.dtype).repeat(B)[:, None, None]      # (B*N, 1, 1)
        alpha = base.to(z0.dtype) * opts.alpha_scale * factors
    with frozen_weights():   # gradients w.r.t. the candidates only
        out = thinker.descend(fn, z0, schedule, opts, alpha)
        final = thinker.final_energy(fn, out.final, schedule[len(out.candidates) - 1]) if final_energy else None
    nfe = out.nfe + (1 if final_energy else 0)
    energies = torch.stack(out.energies)                      # (steps, B*N, L)
    logits, steps_used = out.final, out.steps_used
    pick = torch.zeros(B, L, dtype=torch.long, device=logits.device)
    steps_trace = torch.stack(out.candidates).view(-1, B, N, L, logits.shape[-1]) if trace else None
    final_trace = final.view(B, N, L) if trace and final is not None else None
    energies_trace = energies.view(-1, B, N, L) if trace else None
    if N > 1:
        score = final
        if opts.entropy_weight:   # the candidates' own confidence beside their energy
            p = logits.float().softmax(-1)
            score = final + opts.entropy_weight * torch.special.entr(p).sum(-1).to(final.dtype)
        pick = select_samples(energies[0].view(B, N, L), score.view(B, N, L), opts.select)

        def choose(t: Tensor) -> Tensor:                      # (B*N, L, ...) -> (B, L, ...)
            t = t.view(B, N, L, *t.shape[2:])
            idx = pick.view(B, 1, L, *([1] * (t.dim() - 3))).expand(B, 1, L, *t.shape[3:])
            return t.gather(1, idx).squeeze(1)
        logits, final, steps_used = choose(logits), choose(final), choose(steps_used)
        energies = torch.stack([choose(e) for e in energies])
    traced = ({"logits": steps_trace, "energies": energies_trace, "final_energy": final_trace,
               "pick": pick} if trace else None)
    return ThinkResult(logits.detach(), energies.detach(), final, steps_used, nfe * N, traced)


def extend_cache(model, cache: dict, new_ids: Tensor) -> dict:
    """Append new context tokens (B, T) to a per-step KV cache of the observed stream."""
    energy_model = model.energy
    with frozen_weights():
        return {k: energy_model.observe(new_ids, 0 if k is None else k, past=o) for k, o in cache.items()}


def build_cache(model, input_ids: Tensor) -> dict[Optional[int], Observed]:
    energy_model = model.energy
    keys = list(range(energy_model.num_landscapes)) if energy_model.context_depends_on_step else [None]
    with frozen_weights():
        return {k: energy_model.observe(input_ids, 0 if k is None else k) for k in keys}
