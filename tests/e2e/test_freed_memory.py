"""`keep_freed_memory` (ebt/training/devices.py, called by the evaluation commands): freed CPU tensor memory is reused
by the next allocation instead of being faulted in again. Each case runs in a fresh process (glibc's settings are
process-wide)."""
import os
import subprocess
import sys

import pytest

SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "EBT_KEEP_FREED_MEMORY",
            "THP_MEM_ALLOC_ENABLE")
PROBE = """import resource
from ebt.training.devices import keep_freed_memory
import torch
kept = keep_freed_memory()
torch.ones(16 << 20)   # 64 MB, touched and freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(8 << 20)    # 32 MB: fits in the freed space
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)"""


def faults(**env) -> tuple[bool, int]:
    base = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    res = subprocess.run([sys.executable, "-c", PROBE], env={**base, "THP_MEM_ALLOC_ENABLE": "0", **env},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    kept, count = res.stdout.split()
    return kept == "True", int(count)


def test_freed_memory_is_reused_without_page_faults():
    """A 32 MB tensor reuses the pages an earlier 64 MB one freed; by default glibc unmaps the first on free and
    every 4 KB page of the second faults (8,192 of them). The opt-out and a user's own malloc settings are kept."""
    kept, count = faults()
    if not kept:
        pytest.skip("not glibc: nothing to set")
    assert count < 1_000
    for opt_out in ({"EBT_KEEP_FREED_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}):
        kept, count = faults(**opt_out)
        assert not kept and count > 4_000, opt_out
