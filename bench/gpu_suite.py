"""The training-step benchmark suite of docs/performance.md in one call, printed as one table.

On a GPU (the issue's setting: one H100, batch 32, context 256, vocabulary 50,277, sizes xxs and small, bf16 and
fp32) every configuration runs in its own process (`ebt bench train --model ... --json`), so an out-of-memory
configuration only loses its own row and peak memory is that model's alone (torch.cuda.max_memory_allocated).

    PYTHONPATH=src python bench/gpu_suite.py                 # the GPU table (about 5 minutes on an H100)
    python bench/gpu_suite.py --tiny                          # CPU smoke test with a tiny model (seconds)

Rows: the Transformer++; the reference implementation's formulation (2L-token masked sequence recomputed at
every step, time_embed as in the paper's S1 recipe); ours with time_embed (observed stream once per step); ours
with pred_embed (observed stream once per batch). Both of ours use the defaults: fused attention, stepwise
gradients (one thinking step's graph in memory at a time); `--compiled` adds ours with pred_embed and
model.compile_kernels=true (Triton kernels for the custom Functions' bodies), `--variant LABEL:KEY=VALUE,...`
any other configuration of ours, e.g. `--variant ckpt:model.checkpointing=observed`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODELS = [  # (label, model, conditioning, extra overrides)
    ("Transformer++", "transformer", "time_embed", []),
    ("EBT reference-style (time_embed)", "ebt-ref", "time_embed", []),
    ("EBT ours (time_embed)", "ebt", "time_embed", []),
    ("EBT ours (pred_embed)", "ebt", "pred_embed", []),
]


def run_one(model: str, conditioning: str, sets: list[str], size: str, dtype: str, args) -> dict:
    cmd = [sys.executable, "-m", "ebt", "bench", "train", "--model", model, "--conditioning", conditioning,
           "--dtype", dtype, "--batch", str(args.batch), "--ctx", str(args.ctx), "--vocab", str(args.vocab),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device, "--json"]
    cmd += ["--size", size]   # an unknown size is refused by `ebt bench`, not silently replaced
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.no_memory:
        cmd += ["--no-memory"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {args.timeout}s"}
    if proc.returncode != 0:
        err = proc.stderr.lower()
        return {"error": "out of memory" if "out of memory" in err else (proc.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])["rows"][0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, 2 x 16 tokens, vocab 64")
    p.add_argument("--sizes", default="xxs,small")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--vocab", type=int, default=50277)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per configuration")
    p.add_argument("--no-memory", action="store_true", help="CPU: skip the peak-memory subprocesses")
    p.add_argument("--json", action="store_true", help="also print the rows as one JSON object")
    p.add_argument("--compiled", action="store_true",
                   help="add a row: ours (pred_embed) with model.compile_kernels=true (Triton; ~1 min to compile)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                   help="one more row: ours (pred_embed) with these overrides, e.g. ckpt:model.checkpointing=observed")
    p.add_argument("--skip-reference", action="store_true", help="leave out the reference-style EBT rows")
    args = p.parse_args(argv)
    models = [m for m in MODELS if not (args.skip_reference and m[1] == "ebt-ref")]
    if args.compiled:
        args.variant.append("compiled kernels:model.compile_kernels=true")
    for v in args.variant:   # "LABEL:KEY=VALUE,..." -> ours with pred_embed and these overrides
        label, _, sets = v.partition(":")
        models.append((f"EBT ours (pred_embed, {label})", "ebt", "pred_embed", [x for x in sets.split(",") if x]))
    if args.tiny:
        args.sizes, args.dtypes, args.batch, args.ctx, args.vocab = "tiny", "fp32", 2, 16, 64
        args.steps, args.warmup, args.device, args.threads = 1, 1, "cpu", 1
    rows, t0 = [], time.time()
    for size in args.sizes.split(","):
        for dtype in args.dtypes.split(","):
            base = None
            for label, model, cond, sets in models:
                r = run_one(model, cond, sets, size, dtype, args)
                r.update(size=size, dtype=dtype, label=label)
                if model == "transformer":
                    base = r
                if base and "error" not in r and "error" not in base:
                    r["x_time"] = round(r["step_ms"] / base["step_ms"], 2)
                    if r.get("mem_mib") and base.get("mem_mib"):
                        r["x_mem"] = round(r["mem_mib"] / base["mem_mib"], 2)
                rows.append(r)
                done = r.get("error") or (f"{r['step_ms']} ms, {r['tokens_per_s']:.0f} tokens/s, "
                                          f"{r.get('mem_mib')} MiB, x{r.get('x_time')} time, x{r.get('x_mem')} mem")
                print(f"[{time.time() - t0:6.0f}s] {size} {dtype} {label}: {done}", file=sys.stderr, flush=True)
    print(f"batch {args.batch}, context {args.ctx}, vocabulary {args.vocab}, {args.steps} timed steps after "
          f"{args.warmup} warm-up; memory = peak allocated (CUDA) or resident-set growth (CPU)\n")
    print("| size | dtype | model | step ms | tokens/s | memory MiB | x T++ time | x T++ memory |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['size']} | {r['dtype']} | {r['label']} | {r['error']} | | | | |")
        else:
            print(f"| {r['size']} | {r['dtype']} | {r['label']} | {r['step_ms']} | {r['tokens_per_s']:.0f} | "
                  f"{r.get('mem_mib', '')} | {r.get('x_time', '')} | {r.get('x_mem', '')} |")
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
