"""`ebt experiment s2-ablation|scaling`: the paper's studies at a small budget (`ebt.experiments`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ebt.cli.common import at_least, at_least_one
from ebt.errors import UserError
from ebt.experiments.s2_ablation import VARIANTS, AblationSettings, run_s2_ablation
from ebt.experiments.scaling import BUDGETS, FITTED, MODELS, StudySettings, check_settings, run_study
from ebt.experiments.scaling_report import write_report


def ablation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.add_argument("--steps", type=int, help=f"training steps per variant (default {AblationSettings.steps})")
    p.add_argument("--quick", action="store_true", help="tiny model and budget (seconds; for smoke tests)")
    p.add_argument("--windows", type=int, help="evaluation windows per data set")
    p.add_argument("--samples", type=int, default=5, help="candidates for self-verification")
    p.add_argument("--think-factor", type=int, default=2, help="thinking longer = this many times the steps")
    p.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: PyTorch's default)")


def ablation(args: argparse.Namespace) -> int:
    """The System 2 ablation (paper Table 2): each S2 component removed, thinking measured held-out and OOD."""
    quick = args.quick
    steps = args.steps if args.steps is not None else (3 if quick else AblationSettings.steps)
    windows = args.windows if args.windows is not None else (4 if quick else AblationSettings.windows)
    at_least_one(steps=steps, windows=windows, samples=args.samples, think_factor=args.think_factor)
    at_least(0, threads=args.threads)
    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else tuple(VARIANTS)
    twice = sorted({v for v in variants if variants.count(v) > 1})
    if twice:
        raise UserError(f"--variants names {', '.join(twice)} twice: name each variant once")
    s = AblationSettings(steps=steps, windows=windows, samples=args.samples, think_factor=args.think_factor,
                         variants=variants, seed=args.seed, threads=args.threads, quick=quick)
    run_s2_ablation(Path(args.out), s)
    print(json.dumps({"out_dir": args.out, "table": str(Path(args.out) / "table.md")}))
    return 0


def scaling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="study folder: new, or an earlier study's to resume it")
    p.add_argument("--budget", default="tiny", help="; ".join(f"{b.name}: {b.minutes}" for b in BUDGETS.values()))
    p.add_argument("--axes", default="data,params,width", help=f"comma-separated, from {','.join(FITTED)}")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: ebt,transformer")
    p.add_argument("--seeds", type=int, default=0, help="seeds per point (default: the budget's; tiny: 2)")
    p.add_argument("--jobs", type=int, default=2, help="points trained at once (one process and thread each)")
    p.add_argument("--procs", type=int, default=1, help="processes per point: > 1 runs each point as a torchrun job "
                   "(one per GPU; gloo on CPU)")
    p.add_argument("--task", default="text", help="the modality studied: text or video (others plug in through "
                   "ebt.experiments.scaling.POINT_TASKS)")
    p.add_argument("--no-progress", action="store_true")


def scaling(args: argparse.Namespace) -> int:
    """Scaling of EBT vs Transformer++ with data, parameters, width, depth, batch and FLOPs: fitted rates and CIs."""
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "study.json").is_file())):
        raise UserError(f"--out {str(out)!r} exists and is not a scaling study folder: choose a new folder")
    axes = tuple(dict.fromkeys(a.strip() for a in args.axes.split(",") if a.strip()))
    models = tuple(dict.fromkeys(m.strip() for m in args.models.split(",") if m.strip()))
    s = StudySettings(budget=args.budget, axes=axes, models=models, seeds=args.seeds, jobs=args.jobs,
                      procs=args.procs, task=args.task, progress=not args.no_progress)
    check_settings(s)
    records = run_study(out, s)
    command = (f"ebt experiment scaling --task {s.task} --budget {s.budget} --axes {','.join(s.axes)} --models "
               f"{','.join(s.models)} --seeds {s.seeds} --jobs {s.jobs} --procs {s.procs} --out {args.out}")
    report = write_report(out, records, s.axes, s.models, command)
    print("\n".join(report["summary"]))
    print(json.dumps({"out_dir": args.out, "report": str(out / "report.md"), "points": len(records)}))
    return 0
