"""`ebt generate` (continue a prompt, or a clip for video checkpoints: `cli/video.py`), `ebt energy` (per-token energies as uncertainty) and `ebt explore` (the
thinking explorer page)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ebt.cli.common import add_think_args, think_options
from ebt.cli.video import generate_video
from ebt.errors import UserError
from ebt.text.energies import colour, heatmap, token_energies
from ebt.text.explore import explore_data, write_page
from ebt.text.generation import SampleOptions, generate as generate_text
from ebt.text.task import load_model, load_tokenizer_of
from ebt.training.checkpoint import find_checkpoint, read_config
from ebt.training.rundir import check_output_file


def generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder or checkpoint folder (text or video)")
    p.add_argument("--prompt", help="text: the prompt to continue")
    p.add_argument("--max-new", type=int, help="text: tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, help="text: 0 for greedy (default 0.8)")
    p.add_argument("--top-p", type=float, help="text: nucleus sampling mass (default 0.9)")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-cache", action="store_true", help="recompute the context for every token (slow)")
    v = p.add_argument_group("video checkpoints")
    v.add_argument("--input", help="a clip to continue: video file, frame folder or array (default: a held-out clip)")
    v.add_argument("--frames", type=int, help="frames to generate (default 10)")
    v.add_argument("--context", type=int, help="frames of the clip given as context (default: video.context_frames)")
    v.add_argument("--out", help="the GIF to write (a PNG strip with per-frame energies goes beside it)")
    v.add_argument("--overwrite", action="store_true", help="replace --out and its strip if they exist")
    add_think_args(p)


def generate(args: argparse.Namespace) -> int:
    """Continue a text prompt or a video clip with an EBT or Transformer++ checkpoint."""
    task = read_config(find_checkpoint(args.checkpoint))[0].task
    if task not in GENERATORS:
        raise UserError(f"{args.checkpoint!r} holds a {task} model: `ebt generate` continues text or video "
                        "(images: `ebt denoise`)")
    return GENERATORS[task](args)


def generate_text_prompt(args: argparse.Namespace) -> int:
    if args.prompt is None:
        raise UserError("a text checkpoint needs --prompt TEXT")
    video = [f"--{k}" for k in ("input", "frames", "context", "out") if getattr(args, k) is not None]
    if video or args.overwrite:
        raise UserError(f"{(video or ['--overwrite'])[0]} applies to video checkpoints: a text checkpoint continues "
                        "--prompt and prints the text")
    topts = think_options(args)
    given = {"max_new_tokens": args.max_new, "temperature": args.temperature, "top_p": args.top_p}
    opts = SampleOptions(**{**{"max_new_tokens": 200}, **{k: v for k, v in given.items() if v is not None}},
                         seed=args.seed, use_cache=not args.no_cache)
    model, _ = load_model(args.checkpoint)
    tok = load_tokenizer_of(args.checkpoint)
    prompt = torch.tensor([tok.encode(args.prompt)], dtype=torch.long)
    out = generate_text(model, prompt, opts, topts)
    print(tok.decode(out[0].tolist()))
    return 0


GENERATORS = {"text": generate_text_prompt, "video": generate_video}
"""What `ebt generate` does for a checkpoint of each task."""


def energy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="EBT run or checkpoint folder")
    p.add_argument("--text", required=True)
    p.add_argument("--png", help="also write a tokens x steps heatmap here")
    p.add_argument("--overwrite", action="store_true", help="replace --png if it exists")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.add_argument("--seed", type=int, default=0)
    add_think_args(p)


def energy(args: argparse.Namespace) -> int:
    """Show each token with its final energy (uncertainty); optionally a heatmap over thinking steps."""
    if args.png:
        check_output_file(Path(args.png), args.overwrite, "--png", (".png",))
    elif args.overwrite:
        raise UserError("--overwrite applies to --png: add --png FILE or drop --overwrite")
    model, _ = load_model(args.checkpoint, kind="ebt")
    result = token_energies(model, args.text, think_options(args), args.seed, load_tokenizer_of(args.checkpoint))
    if args.png:
        heatmap(result, Path(args.png))
    if args.json:
        print(json.dumps(result))
        return 0
    lo, hi = min(result["final"]), max(result["final"])
    tty = sys.stdout.isatty()
    first = args.text.encode("utf-8")[:1].decode("utf-8", errors="replace")
    print(first + "".join(colour(t, e, lo, hi) if tty else t for t, e in zip(result["tokens"], result["final"])))
    for t, e in zip(result["tokens"], result["final"]):
        print(f"{t!r:8s} {e:10.4f}")
    return 0


def explore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="EBT run or checkpoint folder")
    p.add_argument("--text", required=True)
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--compare", metavar="CKPT", help="a Transformer++ checkpoint whose prediction the page shows too")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--seed", type=int, default=0)
    add_think_args(p)


def explore(args: argparse.Namespace) -> int:
    """Write the thinking explorer: one self-contained HTML page of per-token energies and thinking steps."""
    out = check_output_file(Path(args.out), args.overwrite, "--out")
    model, _ = load_model(args.checkpoint, kind="ebt")
    tokenizer = load_tokenizer_of(args.checkpoint)
    compare = None
    if args.compare:
        compare = load_model(args.compare, kind="transformer")[0]
        if load_tokenizer_of(args.compare).fingerprint != tokenizer.fingerprint:
            raise UserError("--compare was trained with another tokenizer: compare models of one tokenizer")
    data = explore_data(model, args.text, tokenizer, think_options(args), args.seed, compare)
    write_page(data, out, f"EBT thinking explorer: {Path(args.checkpoint).name}")
    print(json.dumps({"out": str(out), "tokens": len(data["positions"]), "nfe": data["nfe"]}))
    return 0
