"""The optimizer: AdamW parameter groups (the step size alpha in its own group) and warm-up + cosine schedules with
a floor per group."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ebt.config import OptimConfig


def adamw_groups(module: nn.Module, optim: OptimConfig, alpha: Optional[nn.Parameter] = None,
                 alpha_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups: decayed matrices, undecayed vectors, and a learnable step size alpha with its own learning-rate
    multiplier, no weight decay and its own cosine floor (the reference shares the other groups' floor)."""
    decay, no_decay = decay_groups(module, exclude=(alpha,) if alpha is not None else ())
    groups = [{"params": decay, "weight_decay": optim.weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    if alpha is not None and alpha.requires_grad:
        groups.append({"params": [alpha], "weight_decay": 0.0, "name": "alpha", "lr_mult": alpha_lr_mult,
                       "min_lr_ratio": optim.alpha_min_lr_ratio})
    return groups


def decay_groups(module: nn.Module, exclude: tuple = ()) -> tuple[list, list]:
    """Split parameters into weight-decayed matrices and non-decayed vectors (norms, biases, scalars)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad or any(p is e for e in exclude):
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return decay, no_decay


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """Linear warm-up from 0, then cosine decay to `floor` (a fraction of the peak) at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, optim: OptimConfig, total_steps: int):
    groups = model.param_groups(optim)
    for g in groups:
        g["lr"] = optim.lr * g.get("lr_mult", 1.0)
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=optim.betas, eps=optim.eps)
    floors = [g.get("min_lr_ratio", optim.min_lr_ratio) for g in opt.param_groups]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s, f=f: lr_factor(s, total_steps, optim.warmup_steps, f) for f in floors])
    return opt, sched
