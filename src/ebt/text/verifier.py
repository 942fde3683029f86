"""Verifier training (issue 18): teach the energy to rank candidates by how well they predict.

Best-of-N self-verification keeps the candidate with the lowest final energy. Trained on the descent's cross-entropy
alone, the energy of a small EBT ranks candidates by sharpness, right or wrong (docs/s2.md, search sitting 1). This
auxiliary loss gives the energy that ranking as a target. The candidates of each position are the final logits z
at several sharpnesses, s * z for s in `think.verify_scales`. At the trained step sizes z is dominated by
-alpha dE/dp, so s * z is close to what a descent with step size s * alpha reaches: these are the candidates that
best-of-N over step sizes (`ThinkOptions.alpha_spread`) chooses among. The loss is a listwise cross-entropy between

    target    q_s = p_s(y) / sum_r p_r(y)            (each candidate's probability of the true next token)
    predicted softmax(-E_s / T) over the S candidates (lower energy = more likely the best)

so the energies learn to order candidates as their likelihoods do. The temperature T (`think.verify_temperature`)
lets energies that differ by a few hundredths rank confidently without rescaling the energy, whose gradient is the
descent's step. The candidates are constants: only the energy function's parameters learn from this loss, and the
descent itself is trained by the cross-entropy as before.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def verifier_loss(energy: Callable[[Tensor, int], Tensor], final: Tensor, targets: Tensor, scales: tuple,
                  temperature: float, landscape: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """Listwise ranking loss of the energy over sharpness variants of the final logits.

    energy(probs (B, L, V), landscape) -> (B, L); final: logits (B, L, V), detached here; targets (B, L).
    Returns (mean loss over non-pad positions, share of those positions whose lowest-energy candidate has the
    highest probability of the target: the verifier's hit rate, chance 1/S)."""
    z = final.detach().float()
    energies, logp = [], []
    for s in scales:
        log_probs = (z * s).log_softmax(-1)                                          # (B, L, V)
        energies.append(energy(log_probs.exp().to(final.dtype), landscape).float())  # (B, L)
        logp.append(log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1))         # (B, L) log p_s(y)
    e, lp = torch.stack(energies, -1), torch.stack(logp, -1)                       # (B, L, S)
    target = lp.softmax(-1)                                                          # q_s
    per_pos = -(target * torch.log_softmax(-e / temperature, -1)).sum(-1)            # (B, L)
    keep = (targets != pad_id).float()
    n = keep.sum().clamp(min=1.0)
    hits = (e.argmin(-1) == lp.argmax(-1)).float()
    return (per_pos * keep).sum() / n, ((hits * keep).sum() / n).detach()
