"""Presets are functions returning a RunConfig; users change them with YAML files or dotted overrides."""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

from ebt.config import DataConfig, ModelConfig, OptimConfig, RunConfig, ThinkConfig, TrainConfig
from ebt.errors import UserError
from ebt.images.config import denoise_tiny, dit_tiny
from ebt.video.config import frame_ae_tiny, video_tiny


class Size(NamedTuple):
    layers: int
    heads: int
    dim: int
    lr: float
    """The reference's suggested peak learning rate for this size (its `model_sizes` comments)."""


SIZES: dict[str, Size] = {
    # the paper's ladder (Table D.1, reference model/model_utils.py): FFN width = model width, context 256
    "4xs": Size(2, 2, 128, 2.4e-3), "3xs": Size(4, 4, 256, 1.8e-3), "xxs": Size(6, 6, 384, 1.2e-3),
    "xs": Size(12, 6, 384, 9e-4), "small": Size(12, 12, 768, 6e-4), "medium": Size(24, 16, 1024, 3e-4),
    "large": Size(24, 16, 1536, 2.5e-4), "xl": Size(24, 32, 2048, 2e-4),
    # smaller rungs for CPUs (lr by the same trend); `cpu` is the width of docs/performance.md's benchmarks
    "tiny": Size(2, 2, 32, 3e-3), "cpu": Size(4, 4, 256, 1.8e-3),
}
"""The one table of model sizes (layers / heads / width / lr), shared by presets, benchmarks and studies."""


def lm_size(name: str) -> RunConfig:
    """An EBT of the paper's size `name` (System 1, time_embed, 2 steps, context 256; the vocabulary is the
    tokenizer's, by default an 8k BPE of the embedded corpus: give data.path shards and data.tokenizer=auto for a real
    corpus). Meant for GPUs; the reference's xxs recipe otherwise (lr per size, warm-up 10k, batch 256)."""
    size = SIZES[name]
    return RunConfig(
        model=ModelConfig(vocab_size=0, dim=size.dim, layers=size.layers, heads=size.heads, ffn_mult=1.0,
                          context=256, conditioning="time_embed"),
        think=ThinkConfig(landscapes=2, alpha=500.0, learn_alpha=True, alpha_lr_mult=1500.0),
        optim=OptimConfig(lr=size.lr, weight_decay=0.01, warmup_steps=10_000, grad_clip=1.0),
        train=TrainConfig(steps=100_000, batch_size=32, grad_accum=8, eval_every=1000, out_dir=f"runs/lm-{name}"),
        data=DataConfig(tokenizer="embedded-bpe-8192"),
    )


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


ALPHA_TINY_BPE = 5.0
"""Step size of lm-tiny-bpe (picked by a short sweep on a tuning split, docs/data.md)."""


def lm_tiny_bpe() -> RunConfig:
    """lm-tiny on a 4,096-token byte-level BPE of the embedded corpus (trained at first use, then cached).

    The same model and schedule, a vocabulary 16x larger (about 4 bytes per token), its own step size."""
    cfg = lm_tiny()
    cfg.model.vocab_size = 0
    cfg.data.tokenizer = "embedded-bpe-4096"
    cfg.think.alpha, cfg.think.alpha_lr_mult = ALPHA_TINY_BPE, 3 * ALPHA_TINY_BPE
    cfg.train.out_dir = "runs/lm-tiny-bpe"
    return cfg


def lm_tiny_256() -> RunConfig:
    """lm-tiny with a 256-byte context, for downstream items longer than 64 bytes, at the same budget: batch 4 x 256
    tokens = lm-tiny's 16 x 64 per step, for the same 300 steps."""
    cfg = lm_tiny()
    cfg.model.context = 256
    cfg.train.batch_size = 4
    cfg.train.out_dir = "runs/lm-tiny-256"
    return cfg


PRESETS: dict[str, Callable[[], RunConfig]] = {"lm-tiny": lm_tiny, "lm-tiny-s2": lm_tiny_s2, "lm-tiny-bpe": lm_tiny_bpe,
                                               "lm-tiny-256": lm_tiny_256}


def _size_preset(name: str) -> Callable[[], RunConfig]:
    def preset() -> RunConfig:
        return lm_size(name)

    s = SIZES[name]
    preset.__doc__ = (f"The paper's {name} EBT ({s.layers} layers, {s.heads} heads, width {s.dim}, lr {s.lr:g}), "
                      "context 256, an 8k embedded BPE or your shards; for GPUs.")
    return preset


PRESETS.update({f"lm-{name}": _size_preset(name) for name in SIZES if name not in ("tiny", "cpu")})
PRESETS.update({"denoise-tiny": denoise_tiny, "dit-tiny": dit_tiny})  # image runs build an ImageRunConfig
PRESETS.update({"video-tiny": video_tiny, "frame-ae-tiny": frame_ae_tiny})  # video runs: VideoRunConfig, FrameAERunConfig


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
