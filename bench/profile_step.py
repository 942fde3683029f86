"""Where a training step's time goes: torch.profiler over a few steps of one configuration, top operators.

    PYTHONPATH=src python bench/profile_step.py --size small --dtype bf16 --batch 32 --ctx 256 --vocab 50277
    python bench/profile_step.py --size tiny --device cpu --vocab 64 --ctx 16 --batch 2      # smoke test

Prints the operator table sorted by device time (CUDA) or CPU time, and writes a Chrome trace with --trace.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ebt.benchmarks.train_step import add_spec_args, build, resolve_device, spec_from_args, sync, train_step  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_spec_args(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=2, help="profiled steps (after 2 warm-up steps)")
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--trace", help="also write a Chrome trace to this path")
    p.add_argument("--shapes", action="store_true", help="one row per operator and input shapes")
    args = p.parse_args(argv)
    spec = spec_from_args(args, device=args.device)
    device = resolve_device(spec.device)
    model, opt, batch = build(spec, device)
    for _ in range(2):
        train_step(model, opt, batch, device, spec.dtype)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=args.shapes) as prof:
        for _ in range(args.steps):
            train_step(model, opt, batch, device, spec.dtype)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"{args.model} {args.size} {args.dtype} batch {args.batch} ctx {args.ctx} vocab {args.vocab}, "
          f"{args.steps} steps")
    table = prof.key_averages(group_by_input_shape=args.shapes)
    print(table.table(sort_by=key, row_limit=args.rows, max_name_column_width=60,
                      max_shapes_column_width=80 if args.shapes else None))
    if args.trace:
        prof.export_chrome_trace(args.trace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
