"""End-to-end time of the thinking sweep (`ebt eval thinking`'s rows) through each inference path, side by side in
one process, and how far the records' cross-entropies differ.

The sweep scores `--windows` context windows per setting: the trained schedule, one and three more steps, and
best-of-2/5/10 (text/thinking_sweep.py). A random-weight EBT of lm-tiny's shape by default, or a checkpoint.

    python bench/thinking_sweep.py --json                          # lm-tiny shape, context 256, 16 windows
    python bench/thinking_sweep.py --ebt runs/lm-tiny --json       # a trained EBT on its held-out windows
    python bench/thinking_sweep.py --windows 2 --ctx 32 --json     # smoke test

The process runs with `ebt eval thinking`'s settings: huge pages for large tensors (ebt/_entry.py) and freed memory
kept for reuse (`keep_freed_memory`); `EBT_KEEP_FREED_MEMORY=0` measures glibc's default, `THP_MEM_ALLOC_ENABLE=0`
without huge pages. peak_rss_mib is the process's peak resident memory (every path's).

--floor also counts the matrix-product FLOPs one sweep runs through the last path (ebt.training.flops.matmul_flops),
row by row, and times the sweep's linear-layer products in the same process: matmul_floor_s is those FLOPs at the
best rate measured, the time the sweep would take if every product ran at that rate and nothing else cost anything,
and floor_speedup_vs_<first path> the largest speedup that work could give over the first path.

    python bench/thinking_sweep.py --floor --json
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ebt._entry import configure_process  # noqa: E402

configure_process()   # before torch's first allocation, as the `ebt` command does

import torch  # noqa: E402

from ebt.config import ModelConfig, ThinkConfig  # noqa: E402
from ebt.models.explicit import PATHS, inference_path  # noqa: E402
from ebt.text.data import PackedWindows  # noqa: E402
from ebt.text.models import TextEBT  # noqa: E402
from ebt.text.thinking_sweep import SWEEP, thinking_sweep  # noqa: E402
from ebt.training.devices import keep_freed_memory  # noqa: E402
from ebt.training.flops import matmul_flops  # noqa: E402


def windows_of(args) -> tuple:
    if args.ebt:
        from ebt.text.splits import heldout_windows   # the checkpoint's own held-out windows
        from ebt.text.task import load_model, load_tokenizer_of
        model, cfg = load_model(args.ebt, kind="ebt")
        return model, heldout_windows(cfg, load_tokenizer_of(args.ebt))
    torch.manual_seed(0)
    model = TextEBT(ModelConfig(dim=args.dim, layers=args.layers, heads=args.heads, context=args.ctx,
                                conditioning=args.conditioning), ThinkConfig(landscapes=2)).eval()
    stream = torch.randint(1, 256, (args.windows * (args.ctx + 1),))
    return model, PackedWindows(stream, args.ctx + 1, token_bytes=torch.ones(256, dtype=torch.long))


def best_matmul_rate(tokens: int, dim: int, repeats: int = 20) -> tuple[float, str]:
    """The highest GFLOP/s of the best-of-`repeats` timings of the sweep's linear-layer products (the packed
    query-key-value and gate-up projections and their transposes) at `tokens` rows and at fewer (256, 1,024), whose
    operands stay in cache (a generous peak for this core), and the product that reached it."""
    best, at = 0.0, ""
    for rows in sorted({min(256, tokens), min(1024, tokens), tokens}):
        for k, n in ((dim, 3 * dim), (dim, 2 * dim), (2 * dim, dim), (3 * dim, dim)):
            a, b = torch.randn(rows, k), torch.randn(k, n)
            a @ b   # warm-up
            for _ in range(repeats):
                t0 = time.perf_counter()
                a @ b
                rate = 2.0 * rows * k * n / (time.perf_counter() - t0) / 1e9
                if rate > best:
                    best, at = rate, f"({rows}, {k}) @ ({k}, {n})"
    return best, at


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ebt", help="an EBT run or checkpoint folder (default: random weights of lm-tiny's shape)")
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--conditioning", default="time_embed")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--paths", default="autograd,explicit", help=f"comma-separated, from {', '.join(PATHS)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--floor", action="store_true",
                   help="also count the sweep's matmul FLOPs and time them at this core's best measured rate")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    paths = args.paths.split(",")
    if args.floor and paths[-1] == "compiled":
        p.error("--floor counts the last path's matrix products, which a compiled graph hides: put another path last")
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()   # as `ebt eval thinking` does
    model, windows = windows_of(args)
    seconds, records, warmup = {}, {}, {}
    for path in paths:
        with inference_path(path):   # a warm-up window first (the compiled path compiles here, timed apart)
            t0 = time.perf_counter()
            thinking_sweep(model, None, {"set": windows}, 1)
            warmup[path] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            records[path] = thinking_sweep(model, None, {"set": windows}, args.windows)
            seconds[path] = round(time.perf_counter() - t0, 2)
    base = paths[0]
    # cross-entropies, not perplexities: the random-weight model's perplexities are capped at exp(50) (trained alpha,
    # random energies), where any two paths would agree
    ce = {path: [r["ce"] for r in rs] for path, rs in records.items()}
    out = {"windows": args.windows, "context": model.cfg.context, "threads": args.threads, "seconds": seconds,
           "warmup_seconds": warmup, "freed_memory_kept": kept,
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),   # Linux: KiB
           f"speedup_vs_{base}": {k: round(seconds[base] / v, 2) for k, v in seconds.items()},
           "max_ce_relative_difference": max(abs(a - b) / b for v in ce.values() for a, b in zip(v, ce[base]))}
    if args.floor:   # counted on the last path, whose work it is; the fastest rate measured after the timings
        by_row = {}
        with inference_path(paths[-1]):
            for row in SWEEP:
                by_row[row[0]] = matmul_flops(lambda row=row: thinking_sweep(model, None, {"set": windows},
                                                                             args.windows, rows=[row]))
        flops = sum(by_row.values())
        rate, at = best_matmul_rate(min(args.windows, 8) * model.cfg.context, model.cfg.dim)
        floor = flops / rate / 1e9
        out.update(floor_path=paths[-1], matmul_gflop=float(f"{flops / 1e9:.5g}"),
                   matmul_gflop_by_row={k: float(f"{v / 1e9:.5g}") for k, v in by_row.items()},
                   best_matmul_gflops=float(f"{rate:.4g}"), best_matmul_at=at,
                   matmul_floor_s=float(f"{floor:.4g}"),
                   **{f"floor_speedup_vs_{base}": round(seconds[base] / floor, 2)})
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
