"""Typed configuration: one dataclass per section, validated on construction.

A run is described by `RunConfig` = model / think / optim / train / data. Presets are functions in
`ebt.presets`; users change them with YAML files or dotted overrides such as `--optim.lr=3e-3`.
Every invalid value raises `UserError` with a message that names the field and the fix.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ebt.errors import UserError

CONDITIONINGS = ("time_embed", "none", "adaln", "adaln_zero", "pred_embed")
ATTN_IMPLS = ("fused", "math")
CHECKPOINTING = ("none", "observed", "prediction", "all")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise UserError(msg)


def _check_at_least_one(section: str, cfg, names: tuple[str, ...]) -> None:
    """Each of cfg.<name> >= 1, else a UserError naming `section.name`."""
    for name in names:
        _check(getattr(cfg, name) >= 1, f"{section}.{name} must be >= 1, got {getattr(cfg, name)}")


@dataclass(kw_only=True)
class ModelConfig:
    kind: str = "ebt"
    """`ebt` (energy-based transformer) or `transformer` (Transformer++ baseline)."""
    vocab_size: int = 256
    """Vocabulary size; 256 for the default byte-level tokenizer."""
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
        _check(self.kind in ("ebt", "transformer"), f"model.kind={self.kind!r} is not known: use ebt or transformer")
        _check_at_least_one("model", self, ("vocab_size", "dim", "layers", "heads", "context", "attn_query_blocks"))
        _check(self.dim % self.heads == 0,
               f"model.heads={self.heads} does not divide model.dim={self.dim}: pick heads that divide dim")
        _check((self.dim // self.heads) % 2 == 0,
               f"head size dim/heads={self.dim // self.heads} must be even for RoPE: change model.dim or model.heads")
        _check(self.ffn_mult > 0, f"model.ffn_mult must be > 0, got {self.ffn_mult}")
        _check(self.checkpointing in CHECKPOINTING,
               f"model.checkpointing={self.checkpointing!r} is not known: use one of {', '.join(CHECKPOINTING)}")
        _check(self.attn_impl in ATTN_IMPLS,
               f"model.attn_impl={self.attn_impl!r} is not known: use one of {', '.join(ATTN_IMPLS)}")
        _check(self.conditioning in CONDITIONINGS,
               f"model.conditioning={self.conditioning!r} is not known: use one of {', '.join(CONDITIONINGS)}")


@dataclass(kw_only=True)
class ThinkConfig:
    """How the EBT optimises its candidates (the "MCMC" loop of the paper) during training."""
    steps: int = 2
    """Number of energy landscapes (time-embedding rows) = optimisation steps without randomisation."""
    alpha: float = 500.0
    """Initial step size α of the update z <- p - α dE/dp."""
    learn_alpha: bool = True
    alpha_lr_mult: float = 1500.0
    """α's learning rate = alpha_lr_mult * optim.lr (no weight decay on α)."""
    init_std: float = 1.0
    """Initial logits z0 ~ N(0, init_std^2)."""
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
    the returned loss carries the summed gradients (ebt/stepwise.py). Skipped, silently, for FSDP2-sharded
    parameters and outside S1; False always keeps every step's graph until loss.backward()."""
    keep_logits: bool = False
    """With stepwise gradients: keep every step's logits in the training output (`LMOutput.thought.logits`, for
    parity checks and analysis). Off, only the final step's are kept: each is a (B, L, V) float32 tensor, 1.6 GB
    at batch 32, context 256, V = 50,277."""
    replay_topk: int = 0
    """> 0: store only each position's top-k logits (plus the mean of the rest, which fills the other entries on
    replay) instead of all V; see docs/s2.md for what this approximation costs. 0 stores all V logits."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1, f"think.steps must be >= 1, got {self.steps}")
        _check(self.alpha > 0, f"think.alpha must be > 0, got {self.alpha}: the step size is positive")
        _check(self.alpha_lr_mult >= 0, f"think.alpha_lr_mult must be >= 0, got {self.alpha_lr_mult}")
        _check(self.init_std >= 0, f"think.init_std must be >= 0, got {self.init_std}")
        _check(self.langevin_std >= 0, f"think.langevin_std must be >= 0, got {self.langevin_std}")
        _check(self.rand_alpha_scale >= 1, f"think.rand_alpha_scale must be >= 1, got {self.rand_alpha_scale}")
        _check(self.rand_steps >= 0 and self.rand_steps_min >= 0, "think.rand_steps and rand_steps_min must be >= 0")
        _check(self.rand_steps_min <= self.rand_steps + 1,
               f"think.rand_steps_min={self.rand_steps_min} exceeds rand_steps+1={self.rand_steps + 1}")
        _check(self.replay_size >= 0, f"think.replay_size must be >= 0, got {self.replay_size}")
        _check(0 < self.replay_frac <= 1, f"think.replay_frac must be in (0, 1], got {self.replay_frac}")
        _check(self.replay_topk >= 0, f"think.replay_topk must be >= 0, got {self.replay_topk}")
        _check(self.replay_dtype in ("float32", "bfloat16", "float16"),
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
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas must be two numbers in [0, 1)")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.min_lr_ratio <= 1 and 0 <= self.alpha_min_lr_ratio <= 1,
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

    def __post_init__(self) -> None:
        _check_at_least_one("train", self, ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches",
                                             "log_every"))
        _check(self.save_every >= 0, f"train.save_every must be >= 0, got {self.save_every}")
        _check(self.precision in ("fp32", "bf16"), f"train.precision={self.precision!r}: use fp32 or bf16")


@dataclass(kw_only=True)
class DataConfig:
    path: Optional[str] = None
    """A text file or a folder of .txt/.md files; None uses the embedded corpus (King James Bible)."""
    val_fraction: float = 0.02
    """Share of the token stream held out for validation (the tail of the stream)."""
    max_chars: int = 0
    """Use only the first N characters of the corpus (0: all)."""

    def __post_init__(self) -> None:
        _check(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        _check(self.max_chars >= 0, f"data.max_chars must be >= 0, got {self.max_chars}")


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
        _check(self.strategy in DIST_STRATEGIES,
               f"dist.strategy={self.strategy!r} is not known: use one of {', '.join(DIST_STRATEGIES)}")
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            _check(value in ("fp32", "bf16"), f"dist.{name}={value!r}: use fp32 or bf16")
            _check(value == "fp32" or self.strategy == "fsdp2",
                   f"dist.{name}={value} needs dist.strategy=fsdp2: with DDP use train.precision=bf16 (autocast)")
        _check(self.backend in ("auto", "nccl", "gloo"), f"dist.backend={self.backend!r}: use auto, nccl or gloo")


@dataclass(kw_only=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    think: ThinkConfig = field(default_factory=ThinkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# ----------------------------------------------------------------------------------------------------------------
# dict / YAML / override plumbing (stdlib only; unknown keys are always rejected)

def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (often a string from the command line) to the field type `tp`."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], where)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
        if tp is tuple:
            if isinstance(value, str):
                value = [float(v) for v in value.strip("()[] ").split(",")]
            return tuple(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}={value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys with a suggestion."""
    if not isinstance(data, dict):
        raise UserError(f"config section {where or 'root'!r} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise UserError(f"unknown config key {path!r}{_suggest(key, fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def _suggest(key: str, options) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(options), n=1)
    return f": did you mean {close[0]!r}?" if close else f": known keys are {', '.join(options)}"


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return a new config with dotted overrides such as {"optim.lr": "3e-3"} applied and validated."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = data
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = node.keys() if isinstance(node, dict) else []
                raise UserError(f"unknown config key {'.'.join(parts[:i + 1])!r}{_suggest(part, known)}")
            if i == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise UserError(f"{dotted!r} is a section, not a value: set one of its keys, e.g. {dotted}.KEY=VALUE")
                node[part] = value
            else:
                node = node[part]
    return from_dict(type(cfg), data)


def load_yaml(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Load a YAML file of (possibly partial) sections over `base` (default: the library defaults)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist: check the path")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {str(path)!r} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of sections")
    flat = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = node

    walk("", data)
    return apply_overrides(base or RunConfig(), flat)


def save_yaml(cfg: RunConfig, path: str | Path) -> None:
    import yaml

    data = to_dict(cfg)
    data["optim"]["betas"] = list(data["optim"]["betas"])
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
