"""Generation speed of the text EBT with and without the KV cache, side by side in one process.

Modes (same model, same prompt, same thinking settings, greedy decoding):
- cached:     the observed stream's keys/values are cached and extended one token at a time (ours);
- uncached:   the observed stream is recomputed for every new token, only the last position is optimised;
- reference:  what the reference implementation does — re-run the whole sequence and optimise every position's
              candidate, keeping only the last one.
Repetitions are interleaved and the median is reported, so machine noise hits every mode alike.

    python bench/generate_cache.py --json                  # context 256, lm-tiny width
    python bench/generate_cache.py --ctx 64 --new 8 --reps 1 --json   # smoke test
    python bench/generate_cache.py --dim 384 --layers 6 --heads 6 --new 16 --reps 5 --weight-cache --json
    python bench/generate_cache.py --path autograd --json     # every mode through the autograd modules (before)
    python bench/generate_cache.py --cached-compiled --json   # + the cached mode compiled (one graph per token)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from unittest import mock

import torch

from ebt.config import ModelConfig, ThinkConfig
from ebt.text.generation import decode
from ebt.text.inference import think
from ebt.text.models import TextEBT
from ebt.models import layers
from ebt.models.explicit import PATHS, inference_path


def reference_style(model, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy generation that re-optimises every position of the window for each token (no cache)."""
    ids = prompt
    for _ in range(new):
        window = ids[:, -model.cfg.context:]
        logits = think(model, window).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


def run(args) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = TextEBT(ModelConfig(dim=args.dim, layers=args.layers, heads=args.heads, context=args.ctx,
                                conditioning=args.conditioning), ThinkConfig(landscapes=2, alpha=50.0)).eval()
    prompt = torch.randint(1, 256, (args.batch, args.ctx - args.new))

    def greedy(use_cache: bool):
        def go():
            for _ in decode(model, prompt, args.new, None, use_cache, lambda lg: lg.argmax(-1)):
                pass
        return go

    def without_weight_cache():   # cached generation, fused weights concatenated at every call (as before)
        with mock.patch.object(layers, "fused_weight", lambda module, *ws: torch.cat(ws)):
            greedy(True)()

    def on_path(fn):
        def go():
            with inference_path(args.path):
                fn()
        return go

    modes = {"cached": greedy(True), "uncached": greedy(False),
             "reference": lambda: reference_style(model, prompt, args.new)}
    if args.weight_cache:   # the autograd modules' fused weights (the explicit passes pack theirs once)
        modes = {"cached": greedy(True), "cached_no_weight_cache": without_weight_cache}
    modes = {m: on_path(fn) for m, fn in modes.items()}
    if args.cached_compiled:   # the cached mode also as one compiled graph per token (its compile is in the warm-up)
        def compiled():
            with inference_path("compiled"):
                greedy(True)()
        modes["cached_compiled"] = compiled
    if args.skip_reference:
        modes.pop("reference", None)
    times = {m: [] for m in modes}
    for fn in modes.values():  # warm-up
        fn()
    for _ in range(args.reps):
        for name, fn in modes.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    tps = {m: args.batch * args.new / statistics.median(ts) for m, ts in times.items()}
    out = {"path": args.path, "context": args.ctx, "new_tokens": args.new, "batch": args.batch, "dim": args.dim, "layers": args.layers,
           "conditioning": args.conditioning, "threads": args.threads, "reps": args.reps,
           "tokens_per_s": {m: round(v, 2) for m, v in tps.items()}}
    if args.weight_cache:   # median of the per-round ratios
        out["speedup_weight_cache"] = round(statistics.median(
            b / a for a, b in zip(times["cached"], times["cached_no_weight_cache"])), 3)
        return out
    for cached in [m for m in tps if m.startswith("cached")]:
        out[f"speedup_{cached}_vs_uncached"] = round(tps[cached] / tps["uncached"], 2)
        if "reference" in tps:
            out[f"speedup_{cached}_vs_reference"] = round(tps[cached] / tps["reference"], 2)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ctx", type=int, default=256, help="context length reached at the end of generation")
    p.add_argument("--new", type=int, default=32, help="tokens generated (the prompt fills the rest)")
    p.add_argument("--batch", type=int, default=1, help="prompts generated together")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--conditioning", default="time_embed")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--path", choices=PATHS, default="explicit", help="the inference path of every mode")
    p.add_argument("--cached-compiled", action="store_true",
                   help="add the cached mode through the compiled path (one graph per token) beside the others")
    p.add_argument("--weight-cache", action="store_true",
                   help="instead: cached generation with vs without reusing the fused projection weights")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.weight_cache:
        args.path = "autograd"   # the fused-weight cache belongs to the autograd modules (explicit passes pack theirs)
    result = run(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
