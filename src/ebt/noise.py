"""World-size-invariant training noise.

With data parallelism each process draws the noise for its own share of the global batch. Drawn from a
per-process generator, that noise depends on how the batch was split: 2 processes with batch b would not see the
noise of 1 process with batch 2b, and a run's result would depend on the number of GPUs it ran on.

Inside `per_sample(seed, positions, key)` the draws made through this module are instead a function of
(seed, the sample's position in the data stream, the index of the draw within the micro-step): row i of a batch
gets a generator of its own. Choices made once per batch (the random number of thinking steps) come from
`batch_rng()`, seeded by (seed, key) where `key` names the global micro-batch. Outside the context these functions
are plain torch.randn / torch.rand / the `random` module.

A batch whose first dimension differs from the number of positions (e.g. rows appended from a replay buffer,
which is per-process state anyway) falls back to the process's own generator.
"""
from __future__ import annotations

import contextlib
import random
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import Tensor

_MASK = (1 << 64) - 1


def mix(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps), used as a generator seed."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h + (int(v) & _MASK) + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h


@dataclass
class _SampleNoise:
    seed: int
    positions: list[int]
    key: int
    draws: int = 0

    def next_draw(self) -> int:
        self.draws += 1
        return self.draws - 1


_current: ContextVar[Optional[_SampleNoise]] = ContextVar("ebt_sample_noise", default=None)


@contextlib.contextmanager
def per_sample(seed: int, positions, key: int) -> Iterator[None]:
    """Make the noise of this micro-step a function of (seed, each row's stream position, draw index).

    positions: one integer per batch row (its position in the data stream); key: one integer for the whole
    global micro-batch (its first stream position), seeding `batch_rng()`.
    """
    token = _current.set(_SampleNoise(int(seed), [int(p) for p in positions], int(key)))
    try:
        yield
    finally:
        _current.reset(token)


def active() -> bool:
    return _current.get() is not None


def _rows(fn, shape: tuple, device, dtype) -> Optional[Tensor]:
    ctx = _current.get()
    if ctx is None:
        return None
    draw = ctx.next_draw()  # advance even on a fallback so later draws keep their indices
    if len(shape) == 0 or shape[0] != len(ctx.positions):
        return None
    device = torch.device(device) if device is not None else torch.device("cpu")
    out = torch.empty(shape, device=device, dtype=dtype)   # filled row by row: no stacked copy of a (B, L, V) draw
    for row, p in zip(out, ctx.positions):
        g = torch.Generator(device=device).manual_seed(mix(ctx.seed, p, draw))
        fn(tuple(shape[1:]), generator=g, out=row)
    return out


def randn(shape, device=None, dtype=None) -> Tensor:
    """torch.randn(shape), drawn per row inside `per_sample`."""
    shape = tuple(shape)
    out = _rows(torch.randn, shape, device, dtype)
    return out if out is not None else torch.randn(shape, device=device, dtype=dtype)


def randn_like(x: Tensor) -> Tensor:
    return randn(x.shape, device=x.device, dtype=x.dtype)


def rand(shape, device=None, dtype=None) -> Tensor:
    """torch.rand(shape) (uniform on [0, 1)), drawn per row inside `per_sample`."""
    shape = tuple(shape)
    out = _rows(torch.rand, shape, device, dtype)
    return out if out is not None else torch.rand(shape, device=device, dtype=dtype)


def batch_rng() -> Optional[random.Random]:
    """A generator for per-batch choices, the same on every process for one global micro-batch; None outside
    `per_sample` (callers then use the `random` module)."""
    ctx = _current.get()
    if ctx is None:
        return None
    return random.Random(mix(ctx.seed, ctx.key, ctx.next_draw(), 0xB47C))
