"""Page faults and kernel time per CPU training step with transparent huge pages for large tensors (what the `ebt`
command sets, ebt/_entry.py), with huge pages and freed memory kept for reuse (`keep_freed_memory`, which the
evaluation commands add), and with neither.

The `ebt` command sets PyTorch's THP_MEM_ALLOC_ENABLE=1 before torch loads; torch reads it once, so each setting
runs in its own subprocess. Page faults and system time are counted with getrusage over timed steps (they do not
depend on the machine's load the way wall time does); the process's peak resident memory shows what keeping freed
memory costs.

    python bench/page_faults.py --vocab 8192 --json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


TINY = dict(dim=32, layers=2, heads=2, ctx=16, batch=2)   # smoke test size


def measure(model: str, vocab: int, steps: int, tiny: bool = False, retain: bool = False) -> dict:
    """In this process: minor page faults, system and user CPU seconds per training step (after 2 warm-up steps),
    and the process's peak resident memory."""
    sys.path.insert(0, str(SRC))
    import torch

    from ebt.benchmarks.train_step import TrainSpec, build, resolve_device, train_step
    from ebt.training.devices import keep_freed_memory

    if retain:
        keep_freed_memory()

    torch.set_num_threads(1)
    spec = TrainSpec(model=model, vocab=vocab, device="cpu", **(TINY if tiny else {}))
    device = resolve_device("cpu")
    net, opt, batch = build(spec, device)
    for _ in range(2):
        train_step(net, opt, batch, device, spec.dtype)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        train_step(net, opt, batch, device, spec.dtype)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"page_faults": (r1.ru_minflt - r0.ru_minflt) / steps,
            "sys_ms": round((r1.ru_stime - r0.ru_stime) / steps * 1e3, 1),
            "user_ms": round((r1.ru_utime - r0.ru_utime) / steps * 1e3, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}   # Linux: KiB


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--models", default="ebt,transformer")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tiny", action="store_true", help="a tiny model (smoke test)")
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "VOCAB"), help=argparse.SUPPRESS)
    p.add_argument("--retain", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), args.steps, args.tiny, args.retain)))
        return 0
    rows = []
    for model in args.models.split(","):
        for thp, retain in (("1", True), ("1", False), ("0", False)):
            env = {**os.environ, "THP_MEM_ALLOC_ENABLE": thp, "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, __file__, "--worker", model, str(args.vocab), "--steps", str(args.steps)]
            cmd += (["--tiny"] if args.tiny else []) + (["--retain"] if retain else [])
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rows.append({"model": model, "huge_pages": thp == "1", "freed_memory_kept": retain, "vocab": args.vocab,
                         **json.loads(out)})
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
