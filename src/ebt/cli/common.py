"""Argument helpers shared by the subcommands: the one override syntax, thinking flags, number lists."""
from __future__ import annotations

import argparse
from typing import Optional

from ebt.errors import UserError
from ebt.models.explicit import PATHS
from ebt.thinking import ThinkOptions


def split_overrides(extra: list[str]) -> dict[str, str]:
    """['--optim.lr=3e-3', '--train.steps', '10'] -> {'optim.lr': '3e-3', 'train.steps': '10'}."""
    out, i = {}, 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or "." not in arg.split("=")[0]:
            raise UserError(f"unrecognised argument {arg!r}: config overrides look like --section.key=value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif i + 1 < len(extra):
            key, value = arg[2:], extra[i + 1]
            i += 1
        else:
            raise UserError(f"override {arg!r} has no value: write {arg}=VALUE")
        out[key] = value
        i += 1
    return out


def add_think_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("thinking (EBT only)")
    g.add_argument("--steps", type=int, help="optimisation steps per trained landscape (think longer)")
    g.add_argument("--final-landscape-only", action="store_true", help="extra steps only on the last landscape")
    g.add_argument("--samples", type=int, help="candidates per position (best-of-N self-verification)")
    g.add_argument("--select", choices=["min", "max", "max_gap"], help="how to pick among samples (default min)")
    g.add_argument("--tol", type=float, help="stop refining a position once its energy changes less than this")
    g.add_argument("--langevin", type=float, help="Langevin noise std on the candidates (text: logits) at each step")
    g.add_argument("--langevin-first-only", action="store_true", help="noise on the first step only")
    g.add_argument("--accept-lower", action="store_true", help="accept a step only where it lowers the energy")
    g.add_argument("--alpha", type=float, help="absolute step size (default: the trained one)")
    g.add_argument("--alpha-scale", type=float, help="multiply the step size by this")
    g.add_argument("--init-scale", type=float, help="text: scale of the starting noise (wider starts for best-of-N)")
    g.add_argument("--entropy-weight", type=float,
                   help="text best-of-N: choose by final energy + this x the candidate's entropy (default 0)")
    g.add_argument("--alpha-spread", type=float,
                   help="text best-of-N over step sizes: the N candidates use alpha/s .. alpha*s (default 1: none)")
    add_inference_arg(p)


def add_inference_arg(p: argparse.ArgumentParser) -> None:
    """--inference: how models run at inference (`ebt.models.explicit.inference_path`; `main` applies it)."""
    p.add_argument("--inference", choices=PATHS, default="explicit",
                   help="explicit: hand-written inference passes (default); compiled: the same through torch.compile "
                        "(up to two minutes to compile on first use, then the fewest kernels); autograd: the training "
                        "modules and the autograd tape (slowest; for checks)")


def think_options(args: argparse.Namespace) -> Optional[ThinkOptions]:
    """The ThinkOptions of the thinking flags, or None when none was given (the trained schedule)."""
    given = {"steps": args.steps, "samples": args.samples, "select": args.select, "tol": args.tol,
             "langevin_std": args.langevin, "alpha": args.alpha, "alpha_scale": args.alpha_scale,
             "init_scale": args.init_scale, "entropy_weight": args.entropy_weight, "alpha_spread": args.alpha_spread}
    given = {k: v for k, v in given.items() if v is not None}
    flags = {"final_landscape_only": args.final_landscape_only, "langevin_first_only": args.langevin_first_only,
             "accept_lower": args.accept_lower}
    if not given and not any(flags.values()):
        return None
    return ThinkOptions(**given, **{k: v for k, v in flags.items() if v})


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def at_least(minimum: int, **values: int) -> None:
    """UserError naming the first flag below `minimum` (flags given as name=value, `_` for `-`)."""
    for name, value in values.items():
        if value < minimum:
            raise UserError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def at_least_one(**values: int) -> None:
    at_least(1, **values)
