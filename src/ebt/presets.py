"""Presets are functions returning a RunConfig; users change them with YAML files or dotted overrides."""
from __future__ import annotations

from typing import Callable

from ebt.config import DataConfig, ModelConfig, OptimConfig, RunConfig, ThinkConfig, TrainConfig
from ebt.errors import UserError


def lm_tiny() -> RunConfig:
    """A byte-level EBT that trains in a few minutes on 2 CPU cores (System 1 recipe, time_embed, 2 steps).

    alpha is 50 rather than the reference's 500: with a 256-token vocabulary the energy gradient per entry is much
    larger than at 50k tokens (alpha=500 starts at a cross-entropy near 1800). alpha_lr_mult = 3 x alpha, the
    reference's rule for S1 runs."""
    return RunConfig(
        model=ModelConfig(dim=128, layers=4, heads=4, context=64, conditioning="time_embed"),
        think=ThinkConfig(steps=2, alpha=50.0, learn_alpha=True, alpha_lr_mult=150.0),
        optim=OptimConfig(lr=3e-3, warmup_steps=50, weight_decay=0.01),
        train=TrainConfig(steps=300, batch_size=16, eval_every=100, eval_batches=8, out_dir="runs/lm-tiny"),
        data=DataConfig(),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {"lm-tiny": lm_tiny}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
