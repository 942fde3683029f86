"""Helpers shared by the custom autograd operators: precision and optional torch.compile of their bodies."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["upcast", "kernel", "cast_like"]


def upcast(x: Tensor) -> Tensor:
    """float32 for half-precision tensors (numerically sensitive ops), unchanged otherwise (keeps float64 exact)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x



def kernel(fn, compiled: bool):
    """`fn` itself, or (compiled=True) its torch.compile'd version, built on first use and shared by all callers.

    Only pure tensor functions that run outside autograd (the bodies of these Functions) are compiled, which
    sidesteps compile's lack of double-backward support: inductor fuses their element-wise chains into a few
    kernels. Needs a C++ compiler on CPU (Triton on GPU) and costs seconds of compilation on first use."""
    if not compiled:
        return fn
    if fn not in _COMPILED:
        # default shape handling: kernels specialised to the first (training) shapes, a dynamic version only once a
        # second shape appears. dynamic=True tunes every launch configuration for whichever shape comes first and
        # reuses it for all others (pytorch/pytorch#197842), e.g. tiny test shapes' configs for a real batch
        _COMPILED[fn] = torch.compile(fn)
    return _COMPILED[fn]


_COMPILED: dict = {}


def cast_like(t, ref: Tensor):
    """t cast to ref's dtype (None stays None): second-derivative results go back to their inputs' precision."""
    return None if t is None else t.to(ref.dtype)
