"""Presets are functions returning a RunConfig; users change them with YAML files or dotted overrides."""
from __future__ import annotations

import dataclasses
from typing import Callable

from ebt.config import DataConfig, ModelConfig, OptimConfig, RunConfig, ThinkConfig, TrainConfig
from ebt.errors import UserError
from ebt.images.config import denoise_tiny, dit_tiny


def lm_tiny() -> RunConfig:
    """A byte-level EBT that trains in a few minutes on 2 CPU cores (System 1 recipe, time_embed, 2 steps).

    alpha is 50 rather than the reference's 500: with a 256-token vocabulary the energy gradient per entry is much
    larger than at 50k tokens (alpha=500 starts at a cross-entropy near 1800). alpha_lr_mult = 3 x alpha, the
    reference's rule for S1 runs."""
    return RunConfig(
        model=ModelConfig(dim=128, layers=4, heads=4, context=64, conditioning="time_embed"),
        think=ThinkConfig(landscapes=2, alpha=50.0, learn_alpha=True, alpha_lr_mult=150.0),
        optim=OptimConfig(lr=3e-3, warmup_steps=50, weight_decay=0.01),
        train=TrainConfig(steps=300, batch_size=16, eval_every=100, eval_batches=8, out_dir="runs/lm-tiny"),
        data=DataConfig(),
    )


ALPHA_TINY_S2 = 50.0
"""Fixed step size of lm-tiny-s2 (picked by a short sweep, docs/s2.md)."""


def _s2_think(alpha: float) -> ThinkConfig:
    """The reference's NLP System 2 thinking at a fixed step size `alpha` (docs/reference.md §6)."""
    return ThinkConfig(landscapes=1, alpha=alpha, learn_alpha=False, detach=False, truncate=True, langevin_std=3.0,
                       rand_alpha_scale=2.0, rand_steps=2, rand_steps_min=2, replay_size=192, replay_frac=0.5,
                       replay_dtype="bfloat16")


def lm_tiny_s2() -> RunConfig:
    """lm-tiny trained with the System 2 recipe (no detach + truncation, random steps/alpha, Langevin, replay).

    Everything but the step size follows the reference's NLP S2 script (see `lm_s2_reference`): one landscape
    run 2-3 times in training and 3 times at evaluation, alpha fixed and drawn per (sample, position) from
    U(alpha/2, 2 alpha), Langevin noise 3 on the logits, a 192-record replay buffer adding 50% to each batch.
    alpha is ALPHA_TINY_S2 rather than 5: with V=256 the fixed alpha has to do what S1's learnt alpha does
    (docs/s2.md)."""
    cfg = lm_tiny()
    cfg.think = _s2_think(ALPHA_TINY_S2)
    cfg.train.out_dir = "runs/lm-tiny-s2"
    return cfg


def lm_s2_reference() -> RunConfig:
    """The reference's NLP System 2 values for large runs (job_scripts/nlp/pretrain/ebt_s2.sh,
    docs/reference.md §6): xxs model, GPT-NeoX vocabulary (50 277), context 256, fixed alpha 5, Langevin 3, step size scale 2,
    2-3 random steps (3 at evaluation) on one landscape, replay buffer 192 / 50%, lr 0.0012, batch 256 (32 per GPU
    x 4 GPUs x accumulation 2), weight decay 0.01, clip 1, warm-up 10k, 1M steps. Not in PRESETS: it needs a
    GPU and a real tokenised corpus (the byte tokenizer uses only 256 of the 50 277 ids)."""
    return RunConfig(
        model=ModelConfig(vocab_size=50277, dim=384, layers=6, heads=6, ffn_mult=1.0, context=256,
                          conditioning="time_embed"),
        think=dataclasses.replace(_s2_think(5.0), alpha_lr_mult=5000.0),
        optim=OptimConfig(lr=0.0012, weight_decay=0.01, warmup_steps=10_000, grad_clip=1.0),
        train=TrainConfig(steps=1_000_000, batch_size=32, grad_accum=2, eval_every=1000, out_dir="runs/lm-s2"),
        data=DataConfig(),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {"lm-tiny": lm_tiny, "lm-tiny-s2": lm_tiny_s2}
PRESETS.update({"denoise-tiny": denoise_tiny, "dit-tiny": dit_tiny})  # image runs build an ImageRunConfig


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
