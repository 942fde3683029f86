"""The package and the `ebt` command's entry point: `import ebt` leaves torch unloaded, so that the command can set
process-level allocator options before torch's first allocation (ebt/_entry.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_python(code: str, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    res = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_import_is_lazy_and_names_resolve():
    out = run_python("import sys, ebt; print('torch' in sys.modules); import ebt.tasks, ebt.text.models, ebt.text.generation; "
                     "print(ebt.fit is ebt.tasks.fit, ebt.TextEBT is ebt.text.models.TextEBT, 'fit' in dir(ebt), "
                     "ebt.generate is ebt.text.generation.generate)")
    assert out.splitlines() == ["False", "True True True True"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import ebt
        ebt.nope  # noqa: B018


HUGE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PROBE = """import ebt._entry as e
e.configure_process()
import torch
x = torch.ones(8 << 20)   # 32 MB, touched
print([int(line.split()[1]) for line in open('/proc/self/smaps_rollup') if line.startswith('AnonHugePages')][0])"""


@pytest.mark.skipif(not HUGE.exists() or "[never]" in HUGE.read_text(), reason="no transparent huge pages here")
def test_entry_backs_large_cpu_tensors_with_huge_pages():
    assert int(run_python(PROBE)) >= 16 * 1024                                # kB of huge pages under the tensor
    if "[madvise]" in HUGE.read_text():   # under [always] the kernel uses huge pages whatever torch advises
        assert int(run_python(PROBE, THP_MEM_ALLOC_ENABLE="0")) < 16 * 1024  # an explicit opt-out is kept
