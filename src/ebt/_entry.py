"""The `ebt` command's entry point (also `python -m ebt`): process-level CPU settings, then ebt.cli (the command table).

Large CPU tensors that a step allocates afresh cost page faults: every new 4 KB page is faulted in and zeroed by the
kernel when first touched. Two settings cut them (docs/performance.md, bench/page_faults.py):
- transparent huge pages (PyTorch's THP_MEM_ALLOC_ENABLE: allocations of 2 MB and more advised with madvise): six
  times fewer faults per EBT training step and 3-5% of the step in system time, at no cost in peak memory. torch
  reads the variable once, at its first allocation, so it is set before torch is imported;
- freed memory kept for reuse (glibc's mallopt): by default glibc maps every allocation above a threshold (at most
  32 MB) afresh and unmaps it on free, and hands the top of its heap back to the OS, so the (B, heads, L, S)
  attention tensors of whole-window thinking are faulted in again on every call. Kept, the thinking sweep's
  explicit passes take ~21% less time (bench/thinking_sweep.py). The process's resident memory then stays near
  its peak until it exits, which a command's process can afford.
An explicit THP_MEM_ALLOC_ENABLE=0, MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ in the environment is respected.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)


def retain_freed_memory() -> bool:
    """Make glibc's malloc serve allocations below 1 GiB from its heap and keep up to 2 GiB of freed memory there for
    the next allocation. Returns whether it did (not on another C library, nor when the environment sets either)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):   # no C library by that name, or one without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def configure_process() -> None:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    retain_freed_memory()


def main(argv=None) -> int:
    configure_process()
    from ebt.cli import main as cli_main

    return cli_main(argv)
