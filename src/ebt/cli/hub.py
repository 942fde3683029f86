"""`ebt export` (a pretrained folder with a model card), `ebt push` and `ebt pull` (the Hugging Face Hub)."""
from __future__ import annotations

import argparse
import json

from ebt.training import hub
from ebt.training.pretrained import export_pretrained, push_pretrained


def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run or checkpoint folder")
    p.add_argument("out", help="folder to write (new or empty)")
    p.add_argument("--license", default="mit", help="license field of the model card (default: mit)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing folder, replacing its files")


def export(args: argparse.Namespace) -> int:
    """Write a pretrained folder: weights, config, tokenizer and a model card, without trainer state."""
    folder = export_pretrained(args.checkpoint, args.out, args.license, args.overwrite)
    print(json.dumps({"folder": str(folder), "files": sorted(p.name for p in folder.iterdir())}))
    return 0


def push_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run or checkpoint folder")
    p.add_argument("repo", help="Hub model name, user/name (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--token", help="a Hugging Face token with write access (default: the logged-in one)")
    p.add_argument("--license", default="mit", help="license field of the model card (default: mit)")


def push(args: argparse.Namespace) -> int:
    """Upload a checkpoint to the Hugging Face Hub as a pretrained folder with a model card."""
    print(json.dumps({"repo": args.repo, "commit": push_pretrained(args.checkpoint, args.repo, args.private,
                                                                  args.token, args.license)}))
    return 0


def pull_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo", help="Hub model name, user/name")
    p.add_argument("--revision", help="a branch, tag or commit (default: main)")
    p.add_argument("--token", help="a Hugging Face token (private models)")


def pull(args: argparse.Namespace) -> int:
    """Download a model from the Hugging Face Hub into its cache; every command then accepts user/name."""
    print(json.dumps({"repo": args.repo, "folder": str(hub.pull(args.repo, args.revision, args.token))}))
    return 0
