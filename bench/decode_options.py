"""Per-token time of the compiled decoding step (`ebt/text/decoding.py`) under variants of inductor's options, side
by side in one process: each variant compiles its own copy of the token function, and every round runs one decoder
per variant with their tokens interleaved, so the machine's load hits every variant alike. Reports the median time
of a decoded token per variant, its ratio to the first variant, and whether every variant gave the same logits.

The default variants are the steps of docs/performance.md ("The graph's wrapper and guards"): inductor's Python
wrapper with its size checks, without them, and the C++ wrapper without them (`explicit.CPU_STATIC_OPTIONS`, what
`--inference compiled` uses on CPU). Each variant compiles once (about 10 s to 2 minutes; inductor's disk cache
serves repeated runs).

    python bench/decode_options.py --json                                   # EBT, time_embed, lm-tiny width
    python bench/decode_options.py --model transformer --json
    python bench/decode_options.py --variants "python:;cpp:cpp_wrapper=1" --json   # name:option=0/1,... (added to
                                                                                   # the static options)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ebt.config import ModelConfig, ThinkConfig  # noqa: E402
from ebt.models import explicit  # noqa: E402
from ebt.text import decoding  # noqa: E402
from ebt.text.models import TextEBT, TextTransformer  # noqa: E402

DEFAULT_VARIANTS = ("python wrapper:size_asserts=1,alignment_asserts=1;"
                    "python wrapper, no size checks:size_asserts=0,alignment_asserts=0;"
                    "C++ wrapper, no size checks:cpp_wrapper=1,size_asserts=0,alignment_asserts=0")


def parse_variants(text: str) -> dict[str, dict]:
    """'name:key=0|1,...;...' -> {name: inductor options (the static graphs' options plus these)}."""
    out = {}
    for part in filter(None, text.split(";")):
        name, _, opts = part.partition(":")
        extra = dict(item.split("=") for item in filter(None, opts.split(",")))
        out[name] = {**explicit.STATIC_OPTIONS, **{k: bool(int(v)) for k, v in extra.items()}}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("ebt", "transformer"), default="ebt")
    p.add_argument("--conditioning", default="time_embed")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--prompt", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (one decoder per variant each), after one")
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.ctx - args.prompt < 2:
        p.error(f"--prompt {args.prompt} leaves no token to time within --ctx {args.ctx}: give a shorter prompt")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mc = ModelConfig(kind=args.model, vocab_size=args.vocab, dim=args.dim, layers=args.layers, heads=args.heads,
                     context=args.ctx, conditioning=args.conditioning)
    net = (TextTransformer(mc) if args.model == "transformer" else TextEBT(mc, ThinkConfig(landscapes=2))).eval()
    prompt = torch.randint(1, args.vocab, (1, args.prompt))
    token_fn = decoding.transformer_token if args.model == "transformer" else decoding.ebt_token
    variants = parse_variants(args.variants)
    fns = {name: torch.compile(token_fn, dynamic=False, fullgraph=True, options=opts)
           for name, opts in variants.items()}
    times = {name: [] for name in variants}
    compile_s, same = {}, True
    new = args.ctx - args.prompt - 1
    with torch.no_grad(), explicit.inference_path("compiled"):
        for rnd in range(args.rounds + 1):   # the first round compiles and warms up
            decoders, preds = {}, {}
            for name, fn in fns.items():
                d = net.decoder(prompt, None, torch.Generator().manual_seed(0), False)
                d.fn = fn   # this variant's copy of the token function
                t0 = time.perf_counter()
                decoders[name], preds[name] = d, d.first()
                if rnd == 0:
                    compile_s[name] = round(time.perf_counter() - t0, 1)
            for _ in range(new):
                for name, d in decoders.items():
                    token = preds[name].logits.argmax(-1)[:, None]
                    t0 = time.perf_counter()
                    preds[name] = d.advance(token)
                    if rnd:
                        times[name].append(time.perf_counter() - t0)
            first = next(iter(preds.values())).logits
            same = same and all(torch.equal(pr.logits, first) for pr in preds.values())
    ms = {name: round(1e3 * statistics.median(t), 3) for name, t in times.items()}
    base = next(iter(ms.values()))
    out = {"model": args.model, "conditioning": args.conditioning if args.model == "ebt" else None,
           "threads": args.threads, "tokens_timed_per_variant": len(next(iter(times.values()))),
           "ms_per_token": ms, "ratio_to_first": {k: round(v / base, 3) for k, v in ms.items()},
           "compile_and_first_token_s": compile_s, "identical_logits": same}
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
