"""`ebt bench train`: several training configurations timed side by side in one process (interleaved, so machine
noise hits them alike), each one's peak memory from its own subprocess, and ratios against the Transformer++."""
from __future__ import annotations

import dataclasses

import torch

from ebt.benchmarks.memory import measure_memory
from ebt.benchmarks.train_step import TrainSpec, matmul_flops, resolve_device, time_train


def train_bench(specs: list[TrainSpec], steps: int, warmup: int, memory: bool = True, flops: bool = False) -> dict:
    """Time `specs` side by side, measure each one's peak memory, and give ratios against the Transformer++."""
    # memory first, each configuration in its own process, so a GPU never holds the timed models at the same time
    single_cuda = len(specs) == 1 and resolve_device(specs[0].device).type == "cuda"   # measured inline instead
    mems = [measure_memory(s) for s in specs] if memory and not single_cuda else [{} for _ in specs]
    rows = time_train(specs, steps, warmup)
    for row, mem in zip(rows, mems):
        row.update(mem)
    if flops:
        for spec, row in zip(specs, rows):
            row["matmul_gflops"] = round(matmul_flops(spec) / 1e9, 4)
    base = next((r for r in rows if r["model"] == "transformer"), None)
    for r in rows if base is not None else []:
        if r.get("mem_mib") and base.get("mem_mib"):
            r["mem_ratio"] = round(r["mem_mib"] / base["mem_mib"], 2)
        if r.get("matmul_gflops") and base.get("matmul_gflops"):
            r["flop_ratio"] = round(r["matmul_gflops"] / base["matmul_gflops"], 2)
    device = resolve_device(specs[0].device)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
            "config": {k: v for k, v in dataclasses.asdict(specs[0]).items() if k not in ("model", "label")},
            "rows": rows}


def format_table(result: dict) -> str:
    cols = ["name", "step_ms", "step_ms_cpu", "tokens_per_s", "mem_mib", "time_ratio", "cpu_time_ratio", "mem_ratio",
            "flop_ratio"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(str(r.get(c, r.get("error", "")) if c != "name" else r[c]) for c in cols) + " |")
    return "\n".join(lines)
