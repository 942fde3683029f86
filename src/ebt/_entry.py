"""The `ebt` command's entry point (also `python -m ebt`): process-level CPU settings, then ebt.cli (the command table).

Large CPU tensors are backed by transparent huge pages (PyTorch's THP_MEM_ALLOC_ENABLE: allocations of 2 MB and
more advised with madvise). A training step allocates fresh (B, L, V) and activation tensors, and without huge
pages each new 4 KB page of them costs a page fault: six times fewer faults per EBT step and 3-5% of the step in
system time, at no cost in peak memory (docs/performance.md, bench/page_faults.py). torch reads the variable once,
at its first allocation, so it is set here before torch is imported; an explicit THP_MEM_ALLOC_ENABLE=0 in the
environment is respected.
"""
from __future__ import annotations

import os


def configure_process() -> None:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv=None) -> int:
    configure_process()
    from ebt.cli import main as cli_main

    return cli_main(argv)
