"""Devices and precision: where a run computes and in which dtype."""
from __future__ import annotations

import ctypes
import itertools
import os
import re
import warnings
from typing import Callable
from contextlib import nullcontext

import torch
from torch import nn

from ebt.errors import UserError


DEVICE_NAMES = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(name: str) -> torch.device:
    if not DEVICE_NAMES.fullmatch(name):
        raise UserError(f"device {name!r} is not known: use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name!r} but CUDA is not available here: use train.device=cpu")
    return torch.device(name)


def meta_size(build_model: Callable[[], nn.Module]) -> int:
    """Elements of the parameters and buffers of the model `build_model()` makes, counted on the meta device
    (nothing allocated, a damaged config's sizes included; the model's own notes about meta tensors silenced)."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model()
        return sum(t.numel() for t in itertools.chain(model.parameters(), model.buffers()))


def check_fits(nbytes: float, device: torch.device, what: str,
               fix: str = "use fewer samples, a shorter text or a smaller batch") -> None:
    """Refuse, before allocating, a tensor set that cannot fit: more than the free memory of the GPU, or of the
    machine (MemAvailable) on CPU. Unknown free memory is not checked, nor are requests under 256 MiB (cheap enough
    for every generated token: no system query)."""
    if nbytes < 256 * 2**20:
        return
    free = None
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            for line in open("/proc/meminfo"):
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
        except OSError:
            pass
    if free is not None and nbytes > free:
        raise UserError(f"{what} needs about {nbytes / 2**30:.1f} GiB but {free / 2**30:.1f} GiB are free: {fix}")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory that CPU tensors free for the next allocation, for the rest of the process
    (the evaluation commands call it). By default glibc maps large allocations afresh and unmaps them on free, so the
    (B, heads, L, S) attention tensors of whole-window thinking are faulted in 4 KB at a time on every call; kept,
    the thinking sweep's explicit passes took 12-21% less time (docs/performance.md#inference). Not for training,
    where it cost +40% peak memory (fragmentation) and huge pages remove most of the same faults.
    Returns whether it did: not off glibc, and not when EBT_KEEP_FREED_MEMORY=0 or the user set glibc's malloc
    tunables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES)."""
    env = os.environ
    if (env.get("EBT_KEEP_FREED_MEMORY", "1") == "0" or env.get("MALLOC_MMAP_THRESHOLD_")
            or env.get("MALLOC_TRIM_THRESHOLD_") or "malloc" in env.get("GLIBC_TUNABLES", "")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt   # the process's C library; no mallopt outside glibc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # allocations under 1 GiB from the heap (older glibc caps the threshold at 32 MiB), and up to 2 GiB kept free
    mapped = mallopt(M_MMAP_THRESHOLD, 1 << 30) or mallopt(M_MMAP_THRESHOLD, 32 << 20)
    return bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1)) and bool(mapped)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()
