"""Benchmarks: `ebt bench train` (step time and peak memory of a full training step) and `ebt bench generate`.

A training step is what the trainer does: zero_grad, forward (for the EBT: the thinking steps with their
second-order graph), backward, gradient clipping, AdamW step. Time is the median over timed steps after warm-up,
as wall clock and as process CPU time (on a shared CPU the CPU time is the steadier of the two; single-threaded
runs make it an honest work measure). Several models are timed side by side in one process with interleaved
repetitions, so machine noise hits them alike; ratios are taken against the Transformer++.

Peak memory of each configuration is measured in a fresh subprocess: on CPU as the growth of the peak resident
set from just before the model is built (the peak is reset there, Linux clear_refs), so it counts the model,
optimizer state, activations and autograd graph but not the Python/torch runtime; on CUDA as
torch.cuda.max_memory_allocated.

Models: `ebt` (this library), `transformer` (the Transformer++ baseline) and `ebt-ref` (the reference
implementation's formulation with the same weights: the 2L-token masked sequence recomputed at every thinking
step, bench/reference_style.py; available in a source checkout).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ebt.cli import command
from ebt.errors import UserError

SIZES = {  # paper Table D.1 (FFN width = model width), plus the CPU sizes used in docs/performance.md
    "tiny": dict(dim=32, layers=2, heads=2),
    "cpu": dict(dim=256, layers=4, heads=4),
    "xxs": dict(dim=384, layers=6, heads=6),
    "xs": dict(dim=384, layers=12, heads=6),
    "small": dict(dim=768, layers=12, heads=12),
    "medium": dict(dim=1024, layers=24, heads=16),
}
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
    path = Path(__file__).resolve().parents[2] / "bench" / "reference_style.py"
    if not path.is_file():
        raise UserError(f"model ebt-ref needs {path} (a source checkout of the repository)")
    spec = importlib.util.spec_from_file_location("ebt_bench_reference_style", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_device(name: str) -> torch.device:
    """The device, with the trainer's CPU setting: denormal floats flushed to zero (see ebt.train.train)."""
    from ebt.train import resolve_device as resolve

    device = resolve(name)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    return device


def run_config(spec: TrainSpec):
    from ebt.config import ModelConfig, RunConfig, ThinkConfig, apply_overrides

    if spec.model not in MODELS:
        raise UserError(f"--model {spec.model!r} is not known: use one of {', '.join(MODELS)}")
    kind = "transformer" if spec.model == "transformer" else "ebt"
    cfg = RunConfig(model=ModelConfig(kind=kind, vocab_size=spec.vocab, dim=spec.dim, layers=spec.layers,
                                      heads=spec.heads, context=spec.ctx, conditioning=spec.conditioning),
                    think=ThinkConfig(steps=spec.think_steps))
    if kind == "ebt" and spec.overrides:
        cfg = apply_overrides(cfg, spec.overrides)
    return cfg


def build(spec: TrainSpec, device: torch.device):
    """(model, optimizer, batch (B, ctx+1)) for one configuration, deterministic given the spec."""
    from ebt.lm import build_lm
    from ebt.train import build_optimizer

    cfg = run_config(spec)
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, opt, batch, device: torch.device, dtype: str) -> float:
    from ebt.train import autocast

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
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(model, opt, batch, device, specs[i].dtype)
            _sync(device)
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
    """FLOPs of the matrix products (mm/bmm/addmm/baddbmm, and those inside fused SDPA kernels, counted as the
    plain attention's) in one training step's forward and backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    mms = {torch.ops.aten.mm.default: 0, torch.ops.aten.bmm.default: 0,
           torch.ops.aten.addmm.default: 1, torch.ops.aten.baddbmm.default: 1}   # index of the first factor

    class Count(TorchDispatchMode):
        total = 0.0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in mms:
                a, b = args[mms[func]], args[mms[func] + 1]
                Count.total += 2.0 * a.numel() * b.shape[-1]
            elif "scaled_dot_product" in func.__name__:   # fused SDPA: counted as the math path's 2 (4) matmuls
                backward = func.__name__.split(".")[0].endswith("_backward")
                q, k = args[1:3] if backward else args[0:2]          # (B, H, Lq, hd), (B, H, Lk, hd)
                Count.total += (8.0 if backward else 4.0) * q.numel() * k.shape[-2]
            return func(*args, **(kwargs or {}))

    device = resolve_device(spec.device)
    model, _, batch = build(spec, device)
    with Count():
        model(batch).loss.backward()
    return Count.total


def _peak_rss_mib(reset: bool = False) -> float:
    """Peak resident set of this process (VmHWM). reset=True first lowers the peak to the current resident set
    (Linux `clear_refs` 5), so that import-time transients do not hide what the training step needs."""
    try:
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure_memory_here(spec: TrainSpec, steps: int = 2) -> dict:
    """Peak memory of `steps` training steps of a model built now (call in a fresh process on CPU)."""
    device = resolve_device(spec.device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    # one throwaway step of a tiny model of the same kind first: library workspaces and thread pools that are
    # allocated lazily on first use are runtime overhead, not what this configuration needs
    warm = dataclasses.replace(spec, dim=8, layers=1, heads=2, ctx=4, batch=1, vocab=16)
    train_step(*build(warm, device), device, spec.dtype)
    base = _peak_rss_mib(reset=True)
    model, opt, batch = build(spec, device)
    for step in range(steps):
        torch.manual_seed(step)
        train_step(model, opt, batch, device, spec.dtype)
    if device.type == "cuda":
        return {"mem_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "device": "cuda"}
    peak = _peak_rss_mib()
    return {"mem_mib": round(peak - base, 1), "peak_rss_mib": round(peak, 1), "device": "cpu"}


def measure_memory(spec: TrainSpec, steps: int = 2, timeout: Optional[float] = None) -> dict:
    """measure_memory_here in a fresh subprocess; {"error": ...} when it fails (e.g. out of memory)."""
    cmd = [sys.executable, "-m", "ebt.bench", "--memory-worker", json.dumps(dataclasses.asdict(spec)), str(steps)]
    # a fixed glibc mmap threshold: large freed blocks go back to the OS at once, so the resident set follows the
    # live tensors instead of what the allocator keeps cached (the default threshold adapts upwards)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "failed").splitlines()
        return {"error": "out of memory" if "out of memory" in proc.stderr.lower() else lines[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _single_cuda(specs: list[TrainSpec]) -> bool:
    return len(specs) == 1 and resolve_device(specs[0].device).type == "cuda"


def train_bench(specs: list[TrainSpec], steps: int, warmup: int, memory: bool = True, flops: bool = False) -> dict:
    """Time `specs` side by side, measure each one's peak memory, and give ratios against the Transformer++."""
    # memory first, each configuration in its own process, so a GPU never holds the timed models at the same time
    mems = [measure_memory(s) for s in specs] if memory and not _single_cuda(specs) else [{} for _ in specs]
    rows = time_train(specs, steps, warmup)
    for row, mem in zip(rows, mems):
        row.update(mem)
    if flops:
        for spec, row in zip(specs, rows):
            row["matmul_gflops"] = round(matmul_flops(spec) / 1e9, 4)
    base = next((r for r in rows if r["model"] == "transformer"), None)
    for r in rows if base is not None else []:
        if r.get("mem_mib") and base.get("mem_mib"):
            r["mem_ratio"] = round(r["mem_mib"] / base["mem_mib"], 2)
        if r.get("matmul_gflops") and base.get("matmul_gflops"):
            r["flop_ratio"] = round(r["matmul_gflops"] / base["matmul_gflops"], 2)
    device = resolve_device(specs[0].device)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
            "config": {k: v for k, v in dataclasses.asdict(specs[0]).items() if k not in ("model", "label")},
            "rows": rows}


def format_table(result: dict) -> str:
    cols = ["name", "step_ms", "step_ms_cpu", "tokens_per_s", "mem_mib", "time_ratio", "cpu_time_ratio", "mem_ratio",
            "flop_ratio"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(str(r.get(c, r.get("error", "")) if c != "name" else r[c]) for c in cols) + " |")
    return "\n".join(lines)


# ---- CLI ------------------------------------------------------------------------------------------------------
def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["train", "generate"], help="train: training step; generate: tokens/s")
    p.add_argument("--model", default="ebt", choices=MODELS)
    p.add_argument("--size", choices=sorted(SIZES), help="dim/layers/heads preset (overridden by --dim etc.)")
    p.add_argument("--dim", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--think-steps", type=int, default=2, help="EBT thinking steps (S1 recipe: 2)")
    p.add_argument("--conditioning", default="pred_embed", help="EBT step conditioning")
    p.add_argument("--steps", type=int, default=5, help="timed training steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default; 1 is steadiest)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="EBT config override, e.g. model.attn_impl=math (repeatable)")
    p.add_argument("--pair", action="store_true", help="also run the Transformer++ of the same size; print ratios")
    p.add_argument("--reference", action="store_true", help="with --pair: also the reference-style EBT (ebt-ref)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                   help="with --pair: one more EBT with these overrides, timed in the same process")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--flops", action="store_true", help="also count each step's matmul FLOPs (one extra step)")
    p.add_argument("--prompt", type=int, default=16, help="generate: prompt tokens")
    p.add_argument("--new", type=int, default=32, help="generate: new tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object")


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


@command("bench", _bench_args)
def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmark a training step (time, peak memory, ratio to Transformer++) or generation speed."""
    size = dict(SIZES[args.size]) if args.size else dict(SIZES["cpu"])
    for k in ("dim", "layers", "heads"):
        if getattr(args, k) is not None:
            size[k] = getattr(args, k)
    if args.what == "generate":
        from ebt.bench_generate import generate_speed

        res = generate_speed(args.model if args.model != "ebt-ref" else "ebt", ctx=args.ctx, vocab=args.vocab,
                             prompt=args.prompt, new=args.new, reps=args.steps, threads=args.threads,
                             device=args.device, **size)
        print(json.dumps(res) if args.json else f"{res['model']}: {res['tokens_per_s']} tokens/s")
        return 0
    base = spec_from_args(args, args.device, size)
    specs = [base]
    if args.pair:
        specs = [dataclasses.replace(base, model="ebt")]
        for v in args.variant:
            label, _, sets = v.partition(":")
            specs.append(dataclasses.replace(base, model="ebt", label=label,
                                             overrides={**base.overrides, **parse_overrides(sets.split(",") if sets else [])}))
        if args.reference:
            specs.append(dataclasses.replace(base, model="ebt-ref"))
        specs.append(dataclasses.replace(base, model="transformer", overrides={}))
    result = train_bench(specs, args.steps, args.warmup, memory=not args.no_memory, flops=args.flops)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--memory-worker":
    spec_ = TrainSpec(**json.loads(sys.argv[2]))
    print(json.dumps(measure_memory_here(spec_, int(sys.argv[3]))))
