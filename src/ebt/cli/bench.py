"""`ebt bench train|generate`: a training step's time and memory against the Transformer++, or generation speed
(`ebt.benchmarks`)."""
from __future__ import annotations

import argparse
import dataclasses
import json

from ebt.benchmarks.compare import format_table, train_bench
from ebt.benchmarks.generation import generate_speed
from ebt.benchmarks.train_step import MODELS, SIZES, parse_overrides, spec_from_args
from ebt.cli.common import at_least, at_least_one
from ebt.errors import UserError


def bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["train", "generate"], help="train: training step; generate: tokens/s")
    p.add_argument("--model", default="ebt", choices=MODELS)
    p.add_argument("--size", choices=sorted(SIZES), help="dim/layers/heads preset (overridden by --dim etc.)")
    p.add_argument("--dim", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--batch", type=int, help="batch size (train: 8, generate: 1)")
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
    p.add_argument("--prompt", type=int, help="generate: prompt tokens (default: --ctx minus --new)")
    p.add_argument("--new", type=int, default=32, help="generate: new tokens")
    p.add_argument("--paths", default="autograd,explicit",
                   help="generate: inference paths to time side by side, from autograd, explicit, compiled; the first "
                        "is the baseline of the speedups")
    p.add_argument("--uncached", action="store_true", help="generate: also the first path without the KV cache")
    p.add_argument("--json", action="store_true", help="print one JSON object")



def bench(args: argparse.Namespace) -> int:
    """Benchmark a training step (time, peak memory, ratio to Transformer++) or generation speed."""
    if (args.reference or args.variant) and not args.pair:
        raise UserError("--reference and --variant add rows to a --pair comparison: add --pair")
    if args.what == "generate" and (args.pair or args.reference or args.variant):
        raise UserError("--pair, --reference and --variant compare training steps: `ebt bench generate` compares "
                        "inference paths (--paths)")
    if args.batch is None:
        args.batch = 1 if args.what == "generate" else 8
    if args.prompt is None:
        args.prompt = max(1, args.ctx - args.new)
    at_least_one(steps=args.steps, ctx=args.ctx, batch=args.batch, vocab=args.vocab, think_steps=args.think_steps,
                 prompt=args.prompt, new=args.new,
                 **{k: getattr(args, k) for k in ("dim", "layers", "heads") if getattr(args, k) is not None})
    at_least(0, warmup=args.warmup, threads=args.threads)
    size = dict(SIZES[args.size]) if args.size else dict(SIZES["cpu"])
    for k in ("dim", "layers", "heads"):
        if getattr(args, k) is not None:
            size[k] = getattr(args, k)
    if args.what == "generate":
        res = generate_speed(args.model if args.model != "ebt-ref" else "ebt", ctx=args.ctx, vocab=args.vocab,
                             prompt=args.prompt, new=args.new, batch=args.batch, landscapes=args.think_steps,
                             conditioning=args.conditioning, paths=tuple(args.paths.split(",")),
                             uncached=args.uncached, reps=args.steps, threads=args.threads, device=args.device,
                             **size)
        print(json.dumps(res) if args.json else f"{res['model']}: {res['tokens_per_s']} tokens/s end to end, "
                                                 f"{res['decode_tokens_per_s']} decoding")
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
