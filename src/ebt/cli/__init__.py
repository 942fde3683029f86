"""The `ebt` command line: a table of subcommands, each a plain function over parsed arguments.

The CLI is a leaf: it imports the library, nothing imports it. User mistakes raise `UserError`, printed as one line
with exit code 2. Config overrides of `ebt train` use one syntax: `--section.key=value` (e.g. `--optim.lr=3e-3`).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Union

from ebt.cli import bench, data, denoise, evaluate, experiment, generate, hub, train, video
from ebt.cli.common import split_overrides
from ebt.errors import Note, UserError
from ebt.models.explicit import inference_path


@dataclass(frozen=True)
class Command:
    run: Callable[[argparse.Namespace], int]
    """The function that runs it; its docstring's first line is the command's help."""
    add_args: Callable[[argparse.ArgumentParser], None] = lambda p: None

    @property
    def summary(self) -> str:
        return (self.run.__doc__ or "").strip().splitlines()[0]


@dataclass(frozen=True)
class Group:
    """A command with subcommands (`ebt eval text|thinking|denoise`)."""
    summary: str
    commands: dict[str, Command]
    default: Optional[str] = None
    """The subcommand used when the next argument names none (`ebt eval CKPT` = `ebt eval text CKPT`)."""


COMMANDS: dict[str, dict[str, Union[Command, Group]]] = {
    "train and use models": {
        "train": Command(train.train, train.train_args),
        "generate": Command(generate.generate, generate.generate_args),
        "energy": Command(generate.energy, generate.energy_args),
        "explore": Command(generate.explore, generate.explore_args),
        "denoise": Command(denoise.denoise, denoise.denoise_args),
    },
    "data and tokenizers": {
        "tokenizer": Group("Tokenizers.", {"train": Command(data.train_tokenizer, data.tokenizer_args)}),
        "data": Group("Text data.", {"prepare": Command(data.prepare, data.prepare_args),
                                     "get": Command(data.get, data.get_args)}),
    },
    "evaluate": {
        "eval": Group("Evaluate checkpoints: held-out text, the thinking sweep, downstream tasks, EBT vs DiT "
                      "denoising, or video rollouts.", {
            "text": Command(evaluate.text, evaluate.text_args),
            "thinking": Command(evaluate.thinking, evaluate.thinking_args),
            "downstream": Command(evaluate.downstream, evaluate.downstream_args),
            "denoise": Command(denoise.evaluate, denoise.eval_args),
            "video": Command(video.evaluate, video.eval_args)}, default="text"),
    },
    "studies and speed": {
        "experiment": Group("Small-budget reproductions of the paper's studies.", {
            "s2-ablation": Command(experiment.ablation, experiment.ablation_args),
            "scaling": Command(experiment.scaling, experiment.scaling_args)}),
        "bench": Command(bench.bench, bench.bench_args),
    },
    "checkpoints and presets": {
        "convert": Command(train.convert, train.convert_args),
        "export": Command(hub.export, hub.export_args),
        "push": Command(hub.push, hub.push_args),
        "pull": Command(hub.pull, hub.pull_args),
        "presets": Command(train.presets),
    },
}


def command_names() -> list[str]:
    """Every top-level command name (`train`, `eval`, ...)."""
    return [name for group in COMMANDS.values() for name in group]


def _add(sub, name: str, cmd: Command) -> None:
    p = sub.add_parser(name, description=cmd.run.__doc__)
    cmd.add_args(p)
    p.set_defaults(func=cmd.run)


class OneLineParser(argparse.ArgumentParser):
    """A mistyped option is one line naming it and where the help is, exit code 2 (argparse would print the whole
    usage block first). Subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    lines = []
    for title, entries in COMMANDS.items():
        lines.append(f"{title}:")
        for name, entry in entries.items():
            lines.append(f"  {name:12s} {entry.summary}")
            for sub_name, cmd in (entry.commands.items() if isinstance(entry, Group) else ()):
                lines.append(f"    {name} {sub_name:12s} {cmd.summary}")
    parser = OneLineParser(prog="ebt", description="Energy-Based Transformers: train, think, generate.",
                           epilog="\n".join(lines) + "\n\n`ebt COMMAND --help` describes each one; "
                           "`ebt --debug COMMAND ...` shows tracebacks.",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entries in COMMANDS.values():
        for name, entry in entries.items():
            if isinstance(entry, Command):
                _add(sub, name, entry)
                continue
            p = sub.add_parser(name, description=entry.summary, formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="\n".join(f"  {n:10s} {c.summary}" for n, c in entry.commands.items())
                               + (f"\n\n`ebt {name} ARGS` means `ebt {name} {entry.default} ARGS`." if entry.default else ""))
            inner = p.add_subparsers(dest="subcommand", required=True, metavar="WHAT")
            for sub_name, cmd in entry.commands.items():
                _add(inner, sub_name, cmd)
    return parser


def normalise_argv(argv: list[str]) -> list[str]:
    """Older spellings and the default subcommand: `eval-thinking ...` -> `eval thinking ...`,
    `eval CKPT ...` -> `eval text CKPT ...`."""
    groups = {name: e for entries in COMMANDS.values() for name, e in entries.items() if isinstance(e, Group)}
    name, _, sub = argv[0].partition("-") if argv else ("", "", "")
    if sub and name in groups and sub in groups[name].commands:
        argv = [name, sub, *argv[1:]]
    group = groups.get(argv[0]) if argv else None
    if group is not None and group.default and len(argv) > 1 and argv[1] not in group.commands \
            and argv[1] not in ("-h", "--help"):
        argv = [argv[0], group.default, *argv[1:]]
    return argv


_show_warning = warnings.showwarning


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    """Notes (e.g. a renamed config key) are one `ebt: note:` line, not a warning with a source line."""
    if issubclass(category, Note):
        print(f"ebt: note: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


def main(argv: Optional[list[str]] = None) -> int:
    """The error boundary: a user mistake (`UserError`, an operating-system error on a path the user gave) is one
    line on stderr and exit code 2 (3 for a diverged training run); a bug keeps its traceback. `--debug` (or
    EBT_DEBUG=1) shows the traceback of everything."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("EBT_DEBUG", "") not in ("", "0")
    argv = normalise_argv([a for a in argv if a != "--debug"])
    warnings.showwarning = _note
    args, extra = build_parser().parse_known_args(argv)
    name = " ".join(filter(None, [args.command, getattr(args, "subcommand", None)]))
    try:
        if extra and args.command != "train":
            raise UserError(f"unrecognised arguments: {' '.join(extra)} (see `ebt {name} --help`)")
        args.overrides = split_overrides(extra) if args.command == "train" else {}
        with inference_path(getattr(args, "inference", None) or "explicit"):   # --inference of the thinking flags
            return args.func(args)
    except UserError as exc:
        if debug:
            raise
        print(f"ebt {name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:   # a path the user gave: unreadable, read-only, full disk, a file where a folder goes
        if debug or exc.errno is None:
            raise
        where = f" {str(exc.filename)!r}" if exc.filename else ""
        print(f"ebt {name}: error: {exc.strerror}{where}: check the path, its permissions and the free space "
              "(`ebt --debug ...` shows where it happened)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
