"""The config sections of a text run, one dataclass each, validated on construction.

A text run is `RunConfig` = task / model / think / optim / train / data / dist. Image runs reuse the think, optim,
train and dist sections (`ebt.images.config`). Every invalid value raises `UserError` naming the field and the fix.
"""
from __future__ import annotations

import codecs
import math
import re
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ebt.errors import UserError

CONDITIONINGS = ("time_embed", "none", "adaln", "adaln_zero", "pred_embed")
ATTN_IMPLS = ("fused", "math")
CHECKPOINTING = ("none", "observed", "prediction", "all")


def check(ok: bool, msg: str) -> None:
    if not ok:
        raise UserError(msg)


LOGGERS = ("tensorboard", "wandb")


def logger_names(spec: str) -> list[str]:
    """The loggers of a `train.loggers` value ("tensorboard,wandb"; "" or "none" for none), checked (whether they are
    installed is checked when a run opens them: a saved config loads anywhere)."""
    names = [n.strip() for n in spec.split(",") if n.strip() and n.strip() != "none"]
    for n in names:
        if n not in LOGGERS:
            raise UserError(f"train.loggers: {n!r} is not a logger: use any of {', '.join(LOGGERS)} (comma-separated; "
                            "metrics.jsonl is always written)")
    return names


def check_at_least_one(section: str, cfg, names: tuple[str, ...]) -> None:
    """Each of cfg.<name> >= 1, else a UserError naming `section.name`."""
    for name in names:
        check(getattr(cfg, name) >= 1, f"{section}.{name} must be >= 1, got {getattr(cfg, name)}")


@dataclass(kw_only=True)
class ModelConfig:
    kind: str = "ebt"
    """`ebt` (energy-based transformer) or `transformer` (Transformer++ baseline)."""
    vocab_size: int = 256
    """Vocabulary size: 256 for the byte tokenizer; 0 takes the size of the run's tokenizer (`data.tokenizer`)."""
    dim: int = 128
    """Model width D."""
    layers: int = 4
    """Number of transformer blocks."""
    heads: int = 4
    """Attention heads; must divide `dim` with an even head size (RoPE pairs dimensions)."""
    ffn_mult: float = 1.0
    """SwiGLU hidden width = int(ffn_mult * dim); the reference default is 1.0."""
    context: int = 128
    """Number of input positions L per training window."""
    norm_eps: float = 1e-5
    rope_theta: float = 1e4
    conditioning: str = "time_embed"
    """Step conditioning of the EBT: `time_embed` (prepended step token, the paper's default), `none`
    (the reference's `default`), `adaln` / `adaln_zero` (modulation), `pred_embed` (step embedding added to the
    prediction tokens only, so the observed stream can be reused across steps)."""
    prob_embed: bool = False
    """Embed candidates as probability-weighted input embeddings (p @ E) instead of an untied Linear(V, D)."""
    attn_impl: str = "fused"
    """Attention of the EBT's prediction stream: `fused` (exact custom autograd Functions with a hand-written second
    derivative that keep one L x S matrix per layer and step; faster and leaner) or `math` (plain differentiable
    ops, which autograd differentiates twice). Same results; see docs/performance.md."""
    attn_query_blocks: int = 1
    """Split the prediction stream's queries into this many blocks, each attending only to the observed keys its
    rows may see (skips the causally masked part of the L x S work and of the kept probabilities; exact). 1 = off;
    measured in docs/performance.md (`bench/attention_blocks.py`)."""
    checkpointing: str = "none"
    """Activation checkpointing of transformer blocks: `none`, `observed` (the context stream: one more forward of
    it per step, its activations not kept), `prediction` (the candidates' stream, recomputed in both backward
    passes) or `all`. Exact; trades compute for memory."""
    compile_kernels: bool = False
    """Run the bodies of the custom RMSNorm and prediction-attention Functions through torch.compile (fused
    element-wise kernels; the autograd structure stays eager, so double backward still works). Needs a C++
    compiler on CPU or Triton on GPU, and compiles for some seconds on first use."""

    def __post_init__(self) -> None:
        check(self.kind in ("ebt", "transformer"), f"model.kind={self.kind!r} is not known: use ebt or transformer")
        check_at_least_one("model", self, ("dim", "layers", "heads", "context", "attn_query_blocks"))
        check(self.vocab_size >= 0, f"model.vocab_size must be >= 1 (or 0: the tokenizer's size), got {self.vocab_size}")
        check(self.dim % self.heads == 0,
               f"model.heads={self.heads} does not divide model.dim={self.dim}: pick heads that divide dim")
        check((self.dim // self.heads) % 2 == 0,
               f"head size dim/heads={self.dim // self.heads} must be even for RoPE: change model.dim or model.heads")
        check(self.ffn_mult > 0, f"model.ffn_mult must be > 0, got {self.ffn_mult}")
        check(self.checkpointing in CHECKPOINTING,
               f"model.checkpointing={self.checkpointing!r} is not known: use one of {', '.join(CHECKPOINTING)}")
        check(self.attn_impl in ATTN_IMPLS,
               f"model.attn_impl={self.attn_impl!r} is not known: use one of {', '.join(ATTN_IMPLS)}")
        check(self.conditioning in CONDITIONINGS,
               f"model.conditioning={self.conditioning!r} is not known: use one of {', '.join(CONDITIONINGS)}")


@dataclass(kw_only=True)
class ThinkConfig:
    """How the EBT optimises its candidates (the "MCMC" loop of the paper) during training."""
    RENAMED: ClassVar[dict[str, str]] = {"steps": "landscapes"}
    """Old key -> new key; old keys still load (configs and checkpoints written before the rename) with a note."""
    landscapes: int = 2
    """Number of energy landscapes (step-embedding rows). Without randomisation each is descended once, so this is
    also the number of trained optimisation steps; thinking longer at inference repeats landscapes (`--steps` is
    steps *per landscape*)."""
    alpha: float = 500.0
    """Initial step size α of the update z <- p - α dE/dp."""
    learn_alpha: bool = True
    alpha_lr_mult: float = 1500.0
    """α's learning rate = alpha_lr_mult * optim.lr (no weight decay on α)."""
    init_std: float = 1.0
    """Initial logits z0 ~ N(0, init_std^2)."""
    step_from: str = "probs"
    """(text) Where each update starts: "probs", the reference's z' = softmax(z) - alpha dE/dp (each step's logits
    are rebuilt from the gradient), or "logits", z' = z - alpha dE/dp (a descent in logit space that accumulates
    every step's gradient, so the predictions settle only where dE/dp vanishes). Langevin noise then moves where the
    gradient is taken, p = softmax(z + noise), but is not added to the accumulated logits."""
    detach: bool = True
    """Detach candidates between steps (System 1). False keeps the chain (System 2, with truncate)."""
    truncate: bool = False
    """Second-order graph and loss on the final step only (System 2)."""
    langevin_std: float = 0.0
    """Gaussian noise on the logits at each training step (System 2 uses 3.0). Off at evaluation."""
    rand_alpha_scale: float = 1.0
    """α ~ U(α/s, α·s) per (sample, position) in training when s > 1 (System 2 uses 2)."""
    rand_steps: int = 0
    """R > 0: each landscape runs U{rand_steps_min..R+1} times in training and the last R+1 times in eval."""
    rand_steps_min: int = 0
    replay_size: int = 0
    """Replay buffer records (System 2: 192); 0 turns it off."""
    replay_frac: float = 0.5
    """Fraction of the batch size appended from the replay buffer."""
    replay_dtype: str = "bfloat16"
    """Storage precision of replayed logits: float32, bfloat16 or float16."""
    stepwise_grad: bool = True
    """System 1 (detach, no truncation): take each thinking step's parameter gradient right after the step and free
    its second-order graph, so training memory holds one step's graph instead of all of them (same compute). Exact:
    the returned loss carries the summed gradients (ebt/text/stepwise.py). Skipped, silently, for FSDP2-sharded
    parameters and outside S1; False always keeps every step's graph until loss.backward()."""
    keep_logits: bool = False
    """With stepwise gradients: keep every step's logits in the training output (`LMOutput.thought.candidates`, for
    parity checks and analysis). Off, only the final step's are kept: each is a (B, L, V) float32 tensor, 1.6 GB
    at batch 32, context 256, V = 50,277."""
    replay_topk: int = 0
    """> 0: store only each position's top-k logits (plus the mean of the rest, which fills the other entries on
    replay) instead of all V; see docs/s2.md for what this approximation costs. 0 stores all V logits."""
    verify_weight: float = 0.0
    """> 0: add this times the verifier loss (ebt/text/verifier.py) in training: the energy learns to rank sharpness
    variants of the final candidates by their likelihood of the target, for best-of-N selection. 0 turns it off."""
    verify_scales: tuple = (0.5, 1.0, 2.0)
    """The sharpness variants s * z of the final logits z that the verifier loss ranks (at least 2)."""
    verify_temperature: float = 0.02
    """Energies are compared as softmax(-E / T) in the verifier loss. Candidates' energies differ by ~0.04 in a
    trained lm-tiny-s2, so T = 1 leaves the loss at ln(S), and making the energies themselves differ by O(1) would
    scale dE/dp and with it the fixed step size of the descent."""

    def text_only_settings(self) -> list[str]:
        """The settings in use here that act only on text candidates (distributions over a vocabulary)."""
        used = {"replay_size": self.replay_size > 0, "verify_weight": self.verify_weight > 0,
                "step_from": self.step_from != "probs"}
        return [name for name, on in used.items() if on]

    def __post_init__(self) -> None:
        check(self.landscapes >= 1, f"think.landscapes must be >= 1, got {self.landscapes}")
        check(math.isfinite(self.alpha) and self.alpha > 0,
              f"think.alpha must be a finite number > 0, got {self.alpha}: the step size is positive")
        check(self.alpha_lr_mult >= 0, f"think.alpha_lr_mult must be >= 0, got {self.alpha_lr_mult}")
        check(self.init_std >= 0, f"think.init_std must be >= 0, got {self.init_std}")
        check(self.step_from in ("probs", "logits"), f"think.step_from={self.step_from!r}: use probs or logits")
        check(self.langevin_std >= 0, f"think.langevin_std must be >= 0, got {self.langevin_std}")
        check(self.rand_alpha_scale >= 1, f"think.rand_alpha_scale must be >= 1, got {self.rand_alpha_scale}")
        check(self.rand_steps >= 0 and self.rand_steps_min >= 0, "think.rand_steps and rand_steps_min must be >= 0")
        check(self.rand_steps_min <= self.rand_steps + 1,
               f"think.rand_steps_min={self.rand_steps_min} exceeds rand_steps+1={self.rand_steps + 1}")
        check(self.replay_size >= 0, f"think.replay_size must be >= 0, got {self.replay_size}")
        check(0 < self.replay_frac <= 1, f"think.replay_frac must be in (0, 1], got {self.replay_frac}")
        check(self.replay_topk >= 0, f"think.replay_topk must be >= 0, got {self.replay_topk}")
        check(math.isfinite(self.verify_weight) and self.verify_weight >= 0,
              f"think.verify_weight must be a finite number >= 0, got {self.verify_weight}")
        check(math.isfinite(self.verify_temperature) and self.verify_temperature > 0,
              f"think.verify_temperature must be a finite number > 0, got {self.verify_temperature}")
        bad_scales = f"think.verify_scales must be 2 or more finite numbers > 0, got {self.verify_scales!r}"
        try:
            self.verify_scales = tuple(float(v) for v in self.verify_scales)
        except (TypeError, ValueError):
            raise UserError(bad_scales) from None
        check(len(self.verify_scales) >= 2 and all(math.isfinite(v) and v > 0 for v in self.verify_scales),
              bad_scales)
        check(self.replay_dtype in ("float32", "bfloat16", "float16"),
               f"think.replay_dtype={self.replay_dtype!r}: use float32, bfloat16 or float16")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3e-3
    """Peak learning rate."""
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 50
    """Linear warm-up from 0 to the peak over this many optimiser steps."""
    min_lr_ratio: float = 0.1
    """Cosine floor = lr * min_lr_ratio (the reference's 1/10)."""
    alpha_min_lr_ratio: float = 0.1
    """α's own floor, as a fraction of α's peak LR (the reference wrongly decays α towards lr/10)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; <= 0 disables."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        check(math.isfinite(self.lr) and self.lr > 0, f"optim.lr must be a finite number > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas must be two numbers in [0, 1)")
        check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        check(0 <= self.min_lr_ratio <= 1 and 0 <= self.alpha_min_lr_ratio <= 1,
               "optim.min_lr_ratio and optim.alpha_min_lr_ratio must be in [0, 1]")


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 1000
    """Optimiser steps."""
    batch_size: int = 16
    """Windows per micro-batch (per process)."""
    grad_accum: int = 1
    eval_every: int = 200
    eval_batches: int = 8
    log_every: int = 10
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    precision: str = "fp32"
    """fp32 or bf16 (autocast)."""
    seed: int = 0
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    threads: int = 0
    """torch CPU threads (0: leave PyTorch's default)."""
    out_dir: str = "runs/lm"
    progress: bool = True
    """Show a tqdm progress bar."""
    skip_nonfinite: int = 0
    """Skip the update of up to this many steps whose loss or gradient norm is not finite (0: the first such step
    stops the run with exit code 3, keeping the last checkpoint)."""
    loggers: str = "tensorboard"
    """Loggers besides metrics.jsonl (always written), comma-separated: tensorboard, wandb; "none" for none."""

    def __post_init__(self) -> None:
        check_at_least_one("train", self, ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches",
                                             "log_every"))
        check(self.save_every >= 0, f"train.save_every must be >= 0, got {self.save_every}")
        check(self.precision in ("fp32", "bf16"), f"train.precision={self.precision!r}: use fp32 or bf16")
        check(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
              f"train.device={self.device!r} is not known: use auto, cpu, cuda or cuda:N")
        check(self.threads >= 0, f"train.threads must be >= 0 (0: PyTorch's default), got {self.threads}")
        check(self.skip_nonfinite >= 0, f"train.skip_nonfinite must be >= 0, got {self.skip_nonfinite}")
        logger_names(self.loggers)
        check(bool(self.out_dir.strip()), "train.out_dir is empty: name a run folder")


@dataclass(kw_only=True)
class DataConfig:
    path: Optional[str] = None
    """A text file, a folder of .txt/.md files, or a token shard folder (`ebt data prepare`); None uses the embedded
    corpus (King James Bible)."""
    tokenizer: str = "auto"
    """`auto` (a shard folder's own tokenizer; bytes for text), `bytes`, `embedded-bpe-N` (a byte-level BPE of N
    tokens trained on the embedded corpus at first use and cached), or a path to a Hugging Face tokenizer.json."""
    val_fraction: float = 0.02
    """Share of the token stream held out for validation (the tail of the stream)."""
    max_chars: int = 0
    """Use only the first N characters of the text (0: all; not used with token shards)."""
    encoding: str = "utf-8"
    """The text files' encoding (any Python codec name)."""
    errors: str = "strict"
    """Bytes that are not valid in `encoding`: `strict` stops with the file and byte offset; `replace` substitutes
    U+FFFD for each and reports how many."""

    def __post_init__(self) -> None:
        check(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        check(self.max_chars >= 0, f"data.max_chars must be >= 0, got {self.max_chars}")
        check(self.errors in ("strict", "replace"), f"data.errors={self.errors!r}: use strict or replace")
        check(bool(self.tokenizer.strip()), "data.tokenizer is empty: use auto, bytes, embedded-bpe-N or a path to a "
              "tokenizer.json")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise UserError(f"data.encoding={self.encoding!r} is not a known encoding: use e.g. utf-8 or "
                            "latin-1") from None


DIST_STRATEGIES = ("ddp", "fsdp2")


@dataclass(kw_only=True)
class DistConfig:
    """Training on many processes under torchrun (ignored in a single process); see docs/distributed.md."""
    strategy: str = "ddp"
    """`ddp`: every process holds the whole model and gradients are all-reduced. `fsdp2`: parameters, gradients and
    optimizer state are sharded per transformer block (torch `fully_shard`) and gathered for each training step."""
    param_dtype: str = "fp32"
    """fsdp2 mixed precision: dtype the parameters are gathered and computed in (fp32 or bf16; bf16 also turns on
    bf16 autocast so that float32 candidates meet bf16 weights). The sharded master copy stays float32."""
    reduce_dtype: str = "fp32"
    """fsdp2 mixed precision: dtype gradients are reduce-scattered in (fp32 or bf16)."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl on GPUs, gloo on CPU), nccl or gloo."""
    invariant_noise: bool = True
    """Draw the training noise (initial candidates, Langevin noise, random step sizes and step counts) from
    (train.seed, the sample's position in the data stream) instead of a per-process generator, so a run gives the
    same result on any number of processes (world W with batch b = one process with batch W*b)."""

    def __post_init__(self) -> None:
        check(self.strategy in DIST_STRATEGIES,
               f"dist.strategy={self.strategy!r} is not known: use one of {', '.join(DIST_STRATEGIES)}")
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            check(value in ("fp32", "bf16"), f"dist.{name}={value!r}: use fp32 or bf16")
            check(value == "fp32" or self.strategy == "fsdp2",
                   f"dist.{name}={value} needs dist.strategy=fsdp2: with DDP use train.precision=bf16 (autocast)")
        check(self.backend in ("auto", "nccl", "gloo"), f"dist.backend={self.backend!r}: use auto, nccl or gloo")


@dataclass(kw_only=True)
class RunConfig:
    """A text language-modelling run (an EBT or the Transformer++ baseline)."""
    FROM_DATA: ClassVar[tuple[str, ...]] = ("model.vocab_size",)
    """Keys whose 0 means "from the data" (here: the tokenizer's size), resolved when the run starts."""
    task: str = "text"
    """Which registered task trains and loads this run (`ebt.training.registry`); text runs have task=text."""
    model: ModelConfig = field(default_factory=ModelConfig)
    think: ThinkConfig = field(default_factory=ThinkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        check(self.task == "text", f"task={self.task!r}: text runs have task=text (image runs use ImageRunConfig)")
