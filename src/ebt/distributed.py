"""torchrun integration: process group set-up, rank helpers, model wrapping and metric reduction.

Single-process runs go through the same calls, which then do nothing. DDP is exact with EBTs because the inner
gradients are taken with `torch.autograd.grad` and the loss with `backward()`; `static_graph=True` is never used
(it silently corrupts EBT gradients, DESIGN.md).
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def setup() -> None:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        tdist.init_process_group(backend)


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def device_for_rank(name: str) -> torch.device:
    if torch.cuda.is_available() and name in ("auto", "cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def wrap(model: nn.Module, cfg: Any) -> nn.Module:
    """DDP-wrap the model when distributed (find_unused_parameters: truncated steps leave some unused)."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, find_unused_parameters=True)


def no_sync_unless(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on intermediate accumulation micro-steps."""
    if sync or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    if not is_distributed():
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    tdist.all_reduce(t)
    return {k: (t[i] / world()).item() for i, k in enumerate(keys)}


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        tdist.all_reduce(t)
    return t


def gather_objects(obj: Any) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * world()
    tdist.all_gather_object(out, obj)
    return out
