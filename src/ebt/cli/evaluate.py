"""`ebt eval text|thinking|downstream`: held-out cross-entropy and perplexity, the thinking sweep, and downstream
tasks (`ebt eval denoise` is in cli/denoise.py)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ebt.cli.common import add_inference_arg, add_think_args, at_least_one, int_list, think_options
from ebt.errors import UserError
from ebt.experiments.downstream import read_records, report, run_study
from ebt.text.downstream.scoring import Scoring
from ebt.text.downstream.tasks import load_tasks, task_names
from ebt.text.evaluate import evaluate_text
from ebt.text.ood import ood_sets
from ebt.text.splits import heldout_windows, windows_for
from ebt.text.task import load_model, load_tokenizer_of
from ebt.text.diagnostics import diagnostics_plot, diagnostics_table, thinking_diagnostics
from ebt.text.thinking_sweep import sweep_plot, sweep_table, thinking_sweep
from ebt.training import distributed as dist
from ebt.training.devices import keep_freed_memory
from ebt.training.rundir import prepare_output


def text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--data", help="held-out text file or folder, or a shard folder's held-out split (default: the run's own validation split)")
    p.add_argument("--windows", type=int, default=64, help="at most this many context windows")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_think_args(p)


def text(args: argparse.Namespace) -> int:
    """Cross-entropy, perplexity, bits per byte and forward passes per token on held-out text (also `ebt eval CKPT`)."""
    at_least_one(windows=args.windows, batch_size=args.batch_size)
    keep_freed_memory()   # whole-window thinking allocates large attention tensors on every step
    model, cfg = load_model(args.checkpoint)
    windows = heldout_windows(cfg, load_tokenizer_of(args.checkpoint), args.data)
    res = evaluate_text(model, windows, think_options(args), args.windows, args.batch_size, args.seed)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"ce {res['ce']:.4f}  ppl {res['ppl']:.3f}  bpb {res['bpb']:.4f}  tokens {res['tokens']}  "
              f"nfe/token {res['nfe_per_token']}")
    return 0


def thinking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ebt", required=True, help="EBT run or checkpoint folder")
    p.add_argument("--transformer", help="Transformer++ run or checkpoint folder (optional)")
    p.add_argument("--out", required=True, help="folder for thinking.md / thinking.png / thinking.json (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing --out, replacing its files")
    p.add_argument("--windows", type=int, default=16, help="context windows per data set")
    p.add_argument("--ood", action="append", default=[], metavar="NAME=PATH", help="add your own OOD text file")
    p.add_argument("--no-embedded-ood", action="store_true", help="skip the embedded OOD sets")
    p.add_argument("--diagnostics", action="store_true",
                   help="also measure why thinking helps or not (diagnostics.md/.json/.png): the verifier, candidate "
                        "diversity, calibration, convergence per step, CE against ln V")
    p.add_argument("--samples", type=int, help="candidates per position for --diagnostics (>= 2; default 5)")
    p.add_argument("--half", choices=["tune", "report"],
                   help="evaluate only the first (tune) or second (report) half of every set's windows: choose "
                        "settings on one, report on the other (python_docs: its topics in sorted order)")
    add_inference_arg(p)


def thinking(args: argparse.Namespace) -> int:
    """Perplexity vs forward passes from thinking (more steps, best-of-N) on held-out and OOD text."""
    at_least_one(windows=args.windows)
    if args.samples is not None and not args.diagnostics:
        raise UserError("--samples sets the candidates of --diagnostics: add --diagnostics (the sweep's best-of-N rows "
                        "are fixed)")
    args.samples = 5 if args.samples is None else args.samples
    if args.diagnostics and args.samples < 2:
        raise UserError(f"--samples {args.samples}: the diagnostics compare candidates, give at least 2")
    keep_freed_memory()
    extra = {}
    for item in args.ood:
        if "=" not in item:
            raise UserError(f"--ood {item!r}: write NAME=PATH")
        name, path = item.split("=", 1)
        extra[name] = path
    ebt_model, cfg = load_model(args.ebt, kind="ebt")
    tpp_model = load_model(args.transformer, kind="transformer")[0] if args.transformer else None
    tok = load_tokenizer_of(args.ebt)
    if args.transformer and load_tokenizer_of(args.transformer).fingerprint != tok.fingerprint:
        raise UserError("--ebt and --transformer were trained with different tokenizers: compare models of one "
                        "tokenizer (bits per byte across tokenizers: `ebt eval CKPT --json` on the same text)")
    sets = {"held-out": heldout_windows(cfg, tok)}
    texts = ood_sets(extra, embedded=not args.no_embedded_ood)
    sets.update({k: windows_for(v, cfg.model.context, tok) for k, v in texts.items()})
    if args.half:
        for name, windows in list(sets.items()):
            if len(windows) < 2:
                raise UserError(f"set {name!r} has {len(windows)} window: too few to split into tuning and report "
                                "halves (use more text, or drop --half)")
            sets[name] = windows.half(args.half, args.windows)
    out = prepare_output(Path(args.out), args.overwrite)
    records = thinking_sweep(ebt_model, tpp_model, sets, args.windows, progress=True)
    table = sweep_table(records)
    (out / "thinking.md").write_text(table)
    (out / "thinking.json").write_text(json.dumps(records, indent=1))
    sweep_plot(records, out / "thinking.png")
    print(table)
    if args.diagnostics:
        results = {name: thinking_diagnostics(ebt_model, w, samples=args.samples, max_windows=args.windows,
                                              transformer=tpp_model) for name, w in sets.items()}
        diag = diagnostics_table(results)
        (out / "diagnostics.md").write_text(diag)
        (out / "diagnostics.json").write_text(json.dumps(results, indent=1))
        diagnostics_plot(results, out / "diagnostics.png")
        print(diag)
    return 0


def downstream_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="*", metavar="CKPT", help="EBT and Transformer++ run or checkpoint folders")
    p.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                   help="downstream.json files of earlier runs to report together with these checkpoints")
    p.add_argument("--task", action="append", default=[], metavar="NAME[=PATH]",
                   help=f"a task, repeatable (default: the embedded stand-ins): {task_names()}")
    p.add_argument("--out", required=True, help="folder for downstream.md / .json / .png (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing --out, replacing its files")
    p.add_argument("--items", type=int, default=200, help="at most this many items per task (a seeded sample)")
    p.add_argument("--seeds", type=int_list, default=[0], help="comma-separated noise seeds of the EBTs (e.g. 0,1,2)")
    p.add_argument("--stride", type=int, help="sliding-window stride for items longer than the context "
                                              "(default: half the context; at most the context)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pretrain-windows", type=int, default=64, help="held-out windows for the pretraining perplexity")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="also greedy-generate N tokens per item and report exact match")
    p.add_argument("--no-curve", action="store_true", help="skip the EBTs' thinking curve")
    p.add_argument("--json", action="store_true", help="print the records as JSON instead of the tables")
    add_think_args(p)


def downstream(args: argparse.Namespace) -> int:
    """EBT vs Transformer++ on downstream tasks beside their pretraining perplexity, with the thinking curve."""
    at_least_one(items=args.items, batch_size=args.batch_size, pretrain_windows=args.pretrain_windows,
                 stride=args.stride if args.stride is not None else 1)
    if not args.seeds:
        raise UserError("--seeds is empty: give at least one seed, e.g. --seeds 0")
    if args.generate < 0:
        raise UserError(f"--generate must be >= 0, got {args.generate}")
    if not args.checkpoints and not args.merge:
        raise UserError("give checkpoints to evaluate, or --merge downstream.json files to report together")
    merged = [r for path in args.merge for r in read_records(path)]
    tasks = load_tasks(args.task, args.items) if args.checkpoints else {}
    for spec in args.checkpoints:                        # refuse a bad checkpoint before any work
        load_tokenizer_of(spec)
    dist.setup(backend="gloo")           # under torchrun: windows split across the processes (the models are on CPU)
    main_process = dist.rank() == 0
    out = prepare_output(Path(args.out), args.overwrite) if main_process else None
    scoring = Scoring(think_options(args), tuple(args.seeds), args.batch_size, args.stride, args.generate)
    records = run_study(args.checkpoints, tasks, scoring, curve=not args.no_curve,
                        pretrain_windows=args.pretrain_windows,
                        log=lambda m: print(m, file=sys.stderr) if main_process else None)
    if main_process:
        records = merged + records
        text = report(records, out)
        print(json.dumps(records) if args.json else text)
    return 0
