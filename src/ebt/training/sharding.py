"""The layout of the training stream and its split across processes (one rule for every task).

The stream is epoch after epoch of a permutation of the N training items, epoch e shuffled by (seed, e). A global
micro-batch is `world * batch_size` consecutive stream positions and process r takes the r-th slice of
`batch_size` of it. Hence
- W processes with batch b see exactly the items of one process with batch W*b (the all-reduced mean gradient is
  the single-process gradient of the same global batch);
- a run's data position is one number, the samples consumed so far, which resumes on any world size.
Batches may straddle an epoch boundary; nothing is dropped.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from ebt.errors import UserError


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the n items in `epoch`, the same on every process."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def rank_positions(start: int, batch_size: int, rank: int = 0) -> Tensor:
    """Stream positions of this process's rows in the global micro-batch that starts at stream position `start`."""
    first = start + rank * batch_size
    return torch.arange(first, first + batch_size)


class EpochStream:
    """Maps stream positions to item indices (caching the permutations of the epochs in use)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._cache: dict[int, Tensor] = {}

    def items(self, positions: Tensor) -> Tensor:
        epochs, offsets = positions // self.n, positions % self.n
        out = torch.empty_like(positions)
        for e in epochs.unique().tolist():
            if e not in self._cache:
                self._cache = {k: v for k, v in self._cache.items() if k >= e - 1}  # keep memory bounded
                self._cache[e] = epoch_permutation(self.n, self.seed, e)
            sel = epochs == e
            out[sel] = self._cache[e][offsets[sel]]
        return out


def sharded_indices(n: int, batch_size: int, seed: int, start: int = 0, rank: int = 0,
                    world: int = 1) -> Iterator[Tensor]:
    """Endless item-index batches (batch_size,) of process `rank` of `world`, from global stream position `start`
    (the number of samples all processes consumed before)."""
    if world * batch_size > n:
        raise UserError(f"the global batch (processes {world} x train.batch_size {batch_size}) is larger than the "
                        f"{n} training items: use more data or a smaller batch")
    stream, pos = EpochStream(n, seed), start
    while True:
        yield stream.items(rank_positions(pos, batch_size, rank))
        pos += world * batch_size
