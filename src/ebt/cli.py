"""The `ebt` command line: `ebt train | generate | eval | convert | presets`.

Every subcommand maps to a plain function; user mistakes raise `UserError`, printed as one line with exit code 2.
Config overrides use one syntax everywhere: `--section.key=value` (e.g. `--optim.lr=3e-3`).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Optional

from ebt.errors import UserError

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand: `add_args` declares its arguments, the decorated function runs it."""
    def wrap(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (add_args, fn)
        return fn
    return wrap


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


# ---- train ----------------------------------------------------------------------------------------------------
def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="lm-tiny", help="starting configuration (see `ebt presets`)")
    p.add_argument("--config", help="YAML file with config sections, applied over the preset")
    p.add_argument("--model", choices=["ebt", "transformer"], help="shortcut for --model.kind")
    p.add_argument("--data", help="text file or folder (default: the embedded corpus); shortcut for --data.path")
    p.add_argument("--out", help="run folder; shortcut for --train.out_dir")
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def resolve_config(args: argparse.Namespace, overrides: dict[str, str]):
    from ebt.checkpoint import read_config
    from ebt.config import apply_overrides, load_yaml
    from ebt.presets import get_preset

    cfg = get_preset(args.preset)
    if args.config:
        cfg = load_yaml(args.config, base=cfg)
    shortcuts = {"model.kind": args.model, "data.path": args.data, "train.out_dir": args.out}
    overrides = {**{k: v for k, v in shortcuts.items() if v is not None}, **overrides}
    cfg = apply_overrides(cfg, overrides)
    if args.resume:  # the run's own config wins; overrides may still extend it (e.g. more steps)
        from pathlib import Path

        ckpt = Path(cfg.train.out_dir) / "checkpoint"
        if ckpt.is_dir():
            cfg = apply_overrides(read_config(ckpt)[0], overrides)
    return cfg


@command("train", _train_args)
def cmd_train(args: argparse.Namespace) -> int:
    """Train a model (an EBT by default) from a preset, YAML file and overrides."""
    import yaml

    from ebt.config import to_dict
    from ebt.train import train

    cfg = resolve_config(args, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg))), sort_keys=False))
        return 0
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)   # the task follows the config (tasks.task_for)
    from ebt import distributed as dist

    if dist.is_main():
        print(json.dumps({"out_dir": str(result.out_dir), "step": result.step, "val": result.val,
                          "seconds": round(result.seconds, 1)}))
    dist.teardown()  # under torchrun: leave the process group cleanly
    return 0


# ---- generate -------------------------------------------------------------------------------------------------
def add_think_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("thinking (EBT only)")
    g.add_argument("--steps", type=int, help="optimisation steps per trained landscape (think longer)")
    g.add_argument("--final-landscape-only", action="store_true", help="extra steps only on the last landscape")
    g.add_argument("--samples", type=int, help="candidates per position (best-of-N self-verification)")
    g.add_argument("--select", choices=["min", "max", "max_gap"], help="how to pick among samples (default min)")
    g.add_argument("--tol", type=float, help="stop refining a position once its energy changes less than this")
    g.add_argument("--langevin", type=float, help="Langevin noise std on the logits at each step")
    g.add_argument("--langevin-first-only", action="store_true", help="noise on the first step only")
    g.add_argument("--accept-lower", action="store_true", help="accept a step only where it lowers the energy")
    g.add_argument("--alpha", type=float, help="absolute step size (default: the trained one)")
    g.add_argument("--alpha-scale", type=float, help="multiply the step size by this")


def think_options(args: argparse.Namespace):
    from ebt.inference import ThinkOptions

    given = {"steps": args.steps, "samples": args.samples, "select": args.select, "tol": args.tol,
             "langevin_std": args.langevin, "alpha": args.alpha, "alpha_scale": args.alpha_scale}
    given = {k: v for k, v in given.items() if v is not None}
    flags = {"final_landscape_only": args.final_landscape_only, "langevin_first_only": args.langevin_first_only,
             "accept_lower": args.accept_lower}
    if not given and not any(flags.values()):
        return None
    return ThinkOptions(**given, **{k: v for k, v in flags.items() if v})


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new", type=int, default=200, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-cache", action="store_true", help="recompute the context for every token (slow)")
    add_think_args(p)


@command("generate", _generate_args)
def cmd_generate(args: argparse.Namespace) -> int:
    """Continue a prompt with an EBT or Transformer++ checkpoint."""
    import torch

    from ebt.checkpoint import load_model
    from ebt.data.text import ByteTokenizer
    from ebt.generation import SampleOptions, generate

    topts = think_options(args)
    opts = SampleOptions(max_new_tokens=args.max_new, temperature=args.temperature, top_p=args.top_p,
                         seed=args.seed, use_cache=not args.no_cache)
    model, _ = load_model(args.checkpoint)
    tok = ByteTokenizer()
    prompt = torch.tensor([tok.encode(args.prompt)], dtype=torch.long)
    out = generate(model, prompt, opts, topts)
    print(tok.decode(out[0].tolist()))
    return 0


# ---- eval -----------------------------------------------------------------------------------------------------
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--data", help="held-out text file or folder (default: the run's own validation split)")
    p.add_argument("--windows", type=int, default=64, help="at most this many context windows")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_think_args(p)


@command("eval", _eval_args)
def cmd_eval(args: argparse.Namespace) -> int:
    """Cross-entropy, perplexity and forward passes per token on held-out text."""
    from ebt.checkpoint import load_model
    from ebt.evaluate import evaluate_text, heldout_windows

    if args.windows < 1 or args.batch_size < 1:
        raise UserError("--windows and --batch-size must be >= 1")
    model, cfg = load_model(args.checkpoint)
    topts = think_options(args)
    windows = heldout_windows(cfg, args.data)
    res = evaluate_text(model, windows, topts, args.windows, args.batch_size, args.seed)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"ce {res['ce']:.4f}  ppl {res['ppl']:.3f}  tokens {res['tokens']}  nfe/token {res['nfe_per_token']}")
    return 0


# ---- convert / presets ----------------------------------------------------------------------------------------
def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", help="a .ckpt written by the reference implementation")
    p.add_argument("out_dir", help="where to write our checkpoint folder (must not exist)")


@command("convert", _convert_args)
def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a reference (Lightning) checkpoint into an ebt checkpoint folder."""
    from pathlib import Path

    from ebt.checkpoint import save_checkpoint
    from ebt.convert import load_reference

    out = Path(args.out_dir)
    if out.exists():
        raise UserError(f"{str(out)!r} already exists: choose a new output folder")
    model, cfg = load_reference(args.reference)
    save_checkpoint(out, model, cfg, meta={"converted_from": str(args.reference)})
    print(json.dumps({"out_dir": str(out), "model": cfg.model.kind, "conditioning": cfg.model.conditioning}))
    return 0


@command("presets", lambda p: None)
def cmd_presets(args: argparse.Namespace) -> int:
    """List the presets."""
    from ebt.presets import PRESETS

    for name, fn in sorted(PRESETS.items()):
        print(f"{name:16s} {(fn.__doc__ or '').strip().splitlines()[0]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebt", description="Energy-Based Transformers: train, think, generate.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0], description=fn.__doc__)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    import ebt.cli_extra  # noqa: F401  (registers the subcommands that live in other modules)

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "eval" and f"eval-{argv[1]}" in COMMANDS:
        argv = [f"eval-{argv[1]}", *argv[2:]]  # `ebt eval denoise|thinking ...` are registered as eval-NAME
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if extra and args.command != "train":
            raise UserError(f"unrecognised arguments: {' '.join(extra)} (see `ebt {args.command} --help`)")
        args.overrides = split_overrides(extra) if args.command == "train" else {}
        return args.func(args)
    except UserError as exc:
        print(f"ebt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
