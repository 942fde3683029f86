"""`ebt experiment NAME`: the paper's studies at a small budget (`ebt.experiments`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ebt.cli.common import at_least, at_least_one
from ebt.experiments.s2_ablation import VARIANTS, AblationSettings, run_s2_ablation

EXPERIMENTS = {"s2-ablation": run_s2_ablation}


def experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=sorted(EXPERIMENTS), help="which experiment")
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.add_argument("--steps", type=int, help=f"training steps per variant (default {AblationSettings.steps})")
    p.add_argument("--quick", action="store_true", help="tiny model and budget (seconds; for smoke tests)")
    p.add_argument("--windows", type=int, help="evaluation windows per data set")
    p.add_argument("--samples", type=int, default=5, help="candidates for self-verification")
    p.add_argument("--think-factor", type=int, default=2, help="thinking longer = this many times the steps")
    p.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: PyTorch's default)")


def experiment(args: argparse.Namespace) -> int:
    """Run a small-budget reproduction of one of the paper's studies (s2-ablation: Table 2)."""
    quick = args.quick
    steps = args.steps if args.steps is not None else (3 if quick else AblationSettings.steps)
    windows = args.windows if args.windows is not None else (4 if quick else AblationSettings.windows)
    at_least_one(steps=steps, windows=windows, samples=args.samples, think_factor=args.think_factor)
    at_least(0, threads=args.threads)
    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else tuple(VARIANTS)
    s = AblationSettings(steps=steps, windows=windows, samples=args.samples, think_factor=args.think_factor,
                         variants=variants, seed=args.seed, threads=args.threads, quick=quick)
    EXPERIMENTS[args.name](Path(args.out), s)
    print(json.dumps({"out_dir": args.out, "table": str(Path(args.out) / "table.md")}))
    return 0
