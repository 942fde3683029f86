"""Peak memory of a training step, each configuration in a fresh subprocess (`python -m ebt.benchmarks.memory`).

On CPU: the growth of the peak resident set from just before the model is built (the peak is reset there, Linux
clear_refs), so it counts the model, optimizer state, activations and autograd graph but not the Python/torch
runtime. On CUDA: torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from ebt.benchmarks.train_step import TrainSpec, build, resolve_device, train_step


def _peak_rss_mib(reset: bool = False) -> float:
    """Peak resident set of this process (VmHWM). reset=True first lowers the peak to the current resident set
    (Linux `clear_refs` 5), so that import-time transients do not hide what the training step needs."""
    try:
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure_memory_here(spec: TrainSpec, steps: int = 2) -> dict:
    """Peak memory of `steps` training steps of a model built now (call in a fresh process on CPU)."""
    device = resolve_device(spec.device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    # one throwaway step of a tiny model of the same kind first: library workspaces and thread pools that are
    # allocated lazily on first use are runtime overhead, not what this configuration needs
    warm = dataclasses.replace(spec, dim=8, layers=1, heads=2, ctx=4, batch=1, vocab=16)
    train_step(*build(warm, device), device, spec.dtype)
    base = _peak_rss_mib(reset=True)
    model, opt, batch = build(spec, device)
    for step in range(steps):
        torch.manual_seed(step)
        train_step(model, opt, batch, device, spec.dtype)
    if device.type == "cuda":
        return {"mem_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "device": "cuda"}
    peak = _peak_rss_mib()
    return {"mem_mib": round(peak - base, 1), "peak_rss_mib": round(peak, 1), "device": "cpu"}


def measure_memory(spec: TrainSpec, steps: int = 2, timeout: Optional[float] = None) -> dict:
    """measure_memory_here in a fresh subprocess; {"error": ...} when it fails (e.g. out of memory)."""
    cmd = [sys.executable, "-m", "ebt.benchmarks.memory", json.dumps(dataclasses.asdict(spec)), str(steps)]
    # a fixed glibc mmap threshold: large freed blocks go back to the OS at once, so the resident set follows the
    # live tensors instead of what the allocator keeps cached (the default threshold adapts upwards)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "failed").splitlines()
        return {"error": "out of memory" if "out of memory" in proc.stderr.lower() else lines[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    spec_ = TrainSpec(**json.loads(sys.argv[1]))
    print(json.dumps(measure_memory_here(spec_, int(sys.argv[2]))))
