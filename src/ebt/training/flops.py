"""Counting a training step's work: matmul FLOPs measured from the operators a real step runs, and parameter counts
with and without the vocabulary-sized tensors."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

VOCAB_TENSORS = ("embeddings", "vocab_to_embed", "output")
"""Modules whose weights are vocabulary-sized (token embeddings, the EBT's candidate projection, the output head)."""


def matmul_flops(step: Callable[[], None]) -> float:
    """FLOPs of the matrix products (mm/bmm/addmm/baddbmm, and those inside fused SDPA kernels, counted as the plain
    attention's) that `step()` runs, e.g. one training step's forward and backward. Element-wise work is excluded."""
    from torch.utils._python_dispatch import TorchDispatchMode

    mms = {torch.ops.aten.mm.default: 0, torch.ops.aten.bmm.default: 0,
           torch.ops.aten.addmm.default: 1, torch.ops.aten.baddbmm.default: 1}   # index of the first factor

    class Count(TorchDispatchMode):
        total = 0.0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in mms:
                a, b = args[mms[func]], args[mms[func] + 1]
                Count.total += 2.0 * a.numel() * b.shape[-1]
            elif "scaled_dot_product" in func.__name__:   # fused SDPA: counted as the math path's 2 (4) matmuls
                backward = func.__name__.split(".")[0].endswith("_backward")
                q, k = args[1:3] if backward else args[0:2]          # (B, H, Lq, hd), (B, H, Lk, hd)
                Count.total += (8.0 if backward else 4.0) * q.numel() * k.shape[-2]
            return func(*args, **(kwargs or {}))

    with Count():
        step()
    return Count.total


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """{"params": all, "params_non_embedding": without the vocabulary-sized tensors (VOCAB_TENSORS)}."""
    total = non_embedding = 0
    for name, p in model.named_parameters():
        total += p.numel()
        module = name.split(".")[-2] if "." in name else ""
        if module not in VOCAB_TENSORS:
            non_embedding += p.numel()
    return {"params": total, "params_non_embedding": non_embedding}
