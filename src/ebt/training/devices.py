"""Devices and precision: where a run computes and in which dtype."""
from __future__ import annotations

import re
from contextlib import nullcontext

import torch

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


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()
