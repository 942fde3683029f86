"""`ebt train`, `ebt presets`, `ebt convert`: runs from presets, YAML files and overrides."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from ebt.config import apply_overrides, load_yaml, to_dict
from ebt.errors import UserError
from ebt.presets import PRESETS, get_preset
from ebt.tasks import fit
from ebt.text.convert import load_reference
from ebt.text.shards import is_shard_folder
from ebt.text.tokenizers import EMBEDDED_BPE
from ebt.training import distributed as dist
from ebt.training.checkpoint import find_checkpoint, read_config, save_checkpoint
from ebt.training.resume import RESUMABLE, changed_keys, flat, refuse_changes


def train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="starting configuration (default lm-tiny; see `ebt presets`)")
    p.add_argument("--config", help="YAML file with config sections, applied over the preset")
    p.add_argument("--model", choices=["ebt", "transformer"], help="shortcut for --model.kind")
    p.add_argument("--data", help="text file or folder, or a shard folder from `ebt data prepare` (default: the "
                   "embedded corpus); shortcut for --data.path")
    p.add_argument("--out", help="run folder; shortcut for --train.out_dir")
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def resolve_config(args: argparse.Namespace, overrides: dict[str, str]):
    """preset (lm-tiny by default) + YAML + shortcuts + overrides. With --resume the run's saved config + overrides
    instead: a --preset/--config given too must agree with it (on what a resumed run may not change), and the
    trainer refuses overrides a resumed run may not make."""
    cfg = get_preset(args.preset or "lm-tiny")
    preset_tokenizer = getattr(cfg.data, "tokenizer", None)
    if args.config:
        cfg = load_yaml(args.config, base=cfg)
    shortcuts = {"model.kind": args.model, "data.path": args.data, "train.out_dir": args.out}
    overrides = {**{k: v for k, v in shortcuts.items() if v is not None}, **overrides}
    cfg = absolute_data_path(apply_overrides(cfg, overrides))
    if is_shard_folder(getattr(cfg.data, "path", None)) and "data.tokenizer" not in overrides \
            and cfg.data.tokenizer == preset_tokenizer:
        cfg.data.tokenizer = "auto"   # shards train with their own tokenizer unless one is asked for
    if not args.resume:
        return cfg
    try:
        ckpt = find_checkpoint(Path(cfg.train.out_dir))
        saved = read_config(ckpt)[0] if ckpt.is_dir() else None
    except UserError:
        saved = None
    if saved is None:
        return cfg   # no checkpoint there: the trainer says so in its own words
    saved = absolute_data_path(apply_overrides(saved, overrides))   # a bad override is reported as such
    if args.preset is not None or args.config is not None:
        free = {*RESUMABLE, "train.batch_size", "train.grad_accum"}
        free |= {k for k in getattr(cfg, "FROM_DATA", ()) if flat(cfg)[k] == 0}   # resolved when the run began
        free |= set(getattr(cfg, "FROM_RUN_START", ()))
        refuse_changes(changed_keys(cfg, saved, free), cfg, saved)
    return saved


def absolute_data_path(cfg):
    """A run records where its data are, not where they were relative to the folder it was started from."""
    if getattr(cfg.data, "path", None):
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    video = getattr(cfg, "video", None)
    if video is not None and video.encoder_path:   # a frame autoencoder run or an SD-VAE folder
        video.encoder_path = str(Path(video.encoder_path).expanduser().resolve())
    tokenizer = getattr(cfg.data, "tokenizer", None)
    if tokenizer and tokenizer not in ("auto", "bytes") and not EMBEDDED_BPE.fullmatch(tokenizer):   # a path
        cfg.data.tokenizer = str(Path(tokenizer).expanduser().resolve())
    return cfg


def train(args: argparse.Namespace) -> int:
    """Train a model (an EBT by default) from a preset, YAML file and overrides."""
    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: choose one")
    cfg = resolve_config(args, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg))), sort_keys=False))
        return 0
    result = fit(cfg, resume=args.resume, overwrite=args.overwrite)   # the task follows the config's `task`
    if dist.is_main():
        print(json.dumps({"out_dir": str(result.out_dir), "step": result.step, "val": result.val,
                          "seconds": round(result.seconds, 1)}))
    dist.teardown()  # under torchrun: leave the process group cleanly
    return 0


def presets(args: argparse.Namespace) -> int:
    """List the presets."""
    for name, fn in sorted(PRESETS.items()):
        print(f"{name:16s} {(fn.__doc__ or '').strip().splitlines()[0]}")
    return 0


def convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", help="a .ckpt written by the reference implementation")
    p.add_argument("out_dir", help="where to write our checkpoint folder (must not exist)")


def convert(args: argparse.Namespace) -> int:
    """Convert a reference (Lightning) checkpoint into an ebt checkpoint folder."""
    out = Path(args.out_dir)
    if out.exists():
        raise UserError(f"{str(out)!r} already exists: choose a new output folder")
    model, cfg = load_reference(args.reference)
    save_checkpoint(out, model, cfg, meta={"converted_from": str(args.reference)})
    print(json.dumps({"out_dir": str(out), "model": cfg.model.kind, "conditioning": cfg.model.conditioning}))
    return 0
