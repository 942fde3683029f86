"""The `ebt` command's entry point (also `python -m ebt`): process-level CPU settings, then ebt.cli.

Large CPU tensors are backed by transparent huge pages (PyTorch's THP_MEM_ALLOC_ENABLE: 2 MB-aligned allocations
with madvise). On a training step most time outside the matmuls goes to fresh (B, L, V) and activation tensors,
and without huge pages each new 4 KB page of them costs a page fault: measured 8-12% of an EBT training step on
CPU at no cost in peak memory (docs/performance.md). torch reads the variable once, at its first allocation, so
it is set here before torch is imported; an explicit THP_MEM_ALLOC_ENABLE=0 in the environment is respected.
"""
from __future__ import annotations

import os


def configure_process() -> None:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv=None) -> int:
    configure_process()
    from ebt.cli import main as cli_main

    return cli_main(argv)
