"""`ebt bench train`: the time and peak memory of a full training step, models side by side (`memory.py` measures
the memory, `generation.py` is `ebt bench generate`).

A training step is what the trainer does: zero_grad, forward (for the EBT: the thinking steps with their
second-order graph), backward, gradient clipping, AdamW step. Time is the median over timed steps after warm-up,
as wall clock and as process CPU time (on a shared CPU the CPU time is the steadier of the two; single-threaded
runs make it an honest work measure). Several models are timed side by side in one process with interleaved
repetitions, so machine noise hits them alike; ratios are taken against the Transformer++.

Models: `ebt` (this library), `transformer` (the Transformer++ baseline) and `ebt-ref` (the reference
implementation's formulation with the same weights: the 2L-token masked sequence recomputed at every thinking
step, bench/reference_style.py; available in a source checkout).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ebt.config import ModelConfig, RunConfig, ThinkConfig, apply_overrides
from ebt.errors import UserError
from ebt.presets import SIZES as MODEL_SIZES
from ebt.text.models import build_lm
from ebt.training.devices import autocast
from ebt.training.devices import resolve_device as resolve_run_device
from ebt.training.flops import matmul_flops as count_matmul_flops
from ebt.training.loop import check_model_fits
from ebt.training.optim import build_optimizer

SIZES = {name: dict(dim=s.dim, layers=s.layers, heads=s.heads) for name, s in MODEL_SIZES.items()}
"""dim/layers/heads of `ebt.presets.SIZES` (the paper's ladder and the CPU rungs)."""
MODELS = ("ebt", "transformer", "ebt-ref")


@dataclass
class TrainSpec:
    """One configuration to benchmark."""
    model: str = "ebt"
    dim: int = 256
    layers: int = 4
    heads: int = 4
    ctx: int = 128
    batch: int = 8
    vocab: int = 256
    think_steps: int = 2
    dtype: str = "fp32"
    conditioning: str = "pred_embed"
    device: str = "auto"
    threads: int = 0
    label: str = ""
    overrides: dict = field(default_factory=dict)
    """Dotted config overrides, e.g. {"model.attn_impl": "math"} (applied to the EBT models only)."""

    def name(self) -> str:
        return self.label or self.model


def load_reference_style():
    """bench/reference_style.py of the source checkout this package runs from."""
    path = Path(__file__).resolve().parents[3] / "bench" / "reference_style.py"
    if not path.is_file():
        raise UserError(f"model ebt-ref needs {path} (a source checkout of the repository)")
    spec = importlib.util.spec_from_file_location("ebt_bench_reference_style", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_device(name: str) -> torch.device:
    """The device, with the trainer's CPU setting: denormal floats flushed to zero (see ebt.training.loop.train)."""
    device = resolve_run_device(name)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    return device


def run_config(spec: TrainSpec) -> RunConfig:
    if spec.model not in MODELS:
        raise UserError(f"--model {spec.model!r} is not known: use one of {', '.join(MODELS)}")
    kind = "transformer" if spec.model == "transformer" else "ebt"
    cfg = RunConfig(model=ModelConfig(kind=kind, vocab_size=spec.vocab, dim=spec.dim, layers=spec.layers,
                                      heads=spec.heads, context=spec.ctx, conditioning=spec.conditioning),
                    think=ThinkConfig(landscapes=spec.think_steps))
    if kind == "ebt" and spec.overrides:
        cfg = apply_overrides(cfg, spec.overrides)
    return cfg


def build(spec: TrainSpec, device: torch.device):
    """(model, optimizer, batch (B, ctx+1)) for one configuration, deterministic given the spec."""
    cfg = run_config(spec)
    check_model_fits(lambda: build_lm(cfg), device)   # a size that cannot fit is one line, not an allocation error
    torch.manual_seed(0)
    if spec.model == "ebt-ref":
        model = load_reference_style().ReferenceStyleEBT(cfg.model, cfg.think)
    else:
        model = build_lm(cfg)
    model = model.to(device).train()
    opt, _ = build_optimizer(model, cfg.optim, total_steps=1000)
    gen = torch.Generator().manual_seed(1)
    batch = torch.randint(1, spec.vocab, (spec.batch, spec.ctx + 1), generator=gen).to(device)
    return model, opt, batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, opt, batch, device: torch.device, dtype: str) -> float:
    opt.zero_grad(set_to_none=True)
    with autocast(device, "bf16" if dtype == "bf16" else "fp32"):
        out = model(batch)
        out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return out.loss.item()  # also synchronises


def time_train(specs: list[TrainSpec], steps: int = 5, warmup: int = 2) -> list[dict]:
    """Median step time of each spec, the specs' steps interleaved in one process."""
    device = resolve_device(specs[0].device)
    if specs[0].threads:
        torch.set_num_threads(specs[0].threads)
    inline_memory = device.type == "cuda" and len(specs) == 1   # one model in this process: its own peak
    if inline_memory:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    built = [build(s, device) for s in specs]
    wall = [[] for _ in specs]
    cpu = [[] for _ in specs]
    for rep in range(warmup + steps):
        for i, (model, opt, batch) in enumerate(built):
            torch.manual_seed(rep)  # the same initial candidates for every model
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(model, opt, batch, device, specs[i].dtype)
            sync(device)
            if rep >= warmup:
                wall[i].append(time.perf_counter() - t0)
                cpu[i].append(time.process_time() - c0)
    rows = []
    base = next((i for i, s in enumerate(specs) if s.model == "transformer"), None)
    for i, (spec, (model, _, _), w, c) in enumerate(zip(specs, built, wall, cpu)):
        ms = statistics.median(w) * 1e3
        row = {"name": spec.name(), "model": spec.model, "step_ms": round(ms, 2),
               "step_ms_cpu": round(statistics.median(c) * 1e3, 2),
               "tokens_per_s": round(spec.batch * spec.ctx / (ms / 1e3), 1),
               "params": sum(p.numel() for p in model.parameters())}
        if inline_memory:
            row["mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if base is not None:  # median of the per-round ratios: robust to the machine's load drifting over a run
            row["time_ratio"] = round(statistics.median(a / b for a, b in zip(w, wall[base])), 2)
            row["cpu_time_ratio"] = round(statistics.median(a / b for a, b in zip(c, cpu[base])), 2)
        rows.append(row)
    return rows


def matmul_flops(spec: TrainSpec) -> float:
    """FLOPs of the matrix products in one training step's forward and backward (`ebt.training.flops`)."""
    model, _, batch = build(spec, resolve_device(spec.device))
    return count_matmul_flops(lambda: model(batch).loss.backward())


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: write KEY=VALUE, e.g. model.attn_impl=math")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def add_spec_args(p: argparse.ArgumentParser) -> None:
    """Flags for one training configuration, shared by the single-configuration scripts in bench/."""
    p.add_argument("--model", default="ebt", choices=MODELS)
    p.add_argument("--size", default="cpu", choices=sorted(SIZES))
    p.add_argument("--conditioning", default="pred_embed")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="EBT config override")


def spec_from_args(args: argparse.Namespace, device: str, size: Optional[dict] = None) -> TrainSpec:
    """The TrainSpec of parsed flags; `size` (dim/layers/heads) defaults to SIZES[args.size]."""
    return TrainSpec(model=args.model, ctx=args.ctx, batch=args.batch, vocab=args.vocab, dtype=args.dtype,
                     conditioning=args.conditioning, device=device, overrides=parse_overrides(args.set),
                     think_steps=getattr(args, "think_steps", TrainSpec.think_steps),
                     threads=getattr(args, "threads", TrainSpec.threads),
                     **(size or SIZES[args.size]))


