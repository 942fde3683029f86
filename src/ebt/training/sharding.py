"""The layout of the training stream and its split across processes (one rule for every task).

The stream is epoch after epoch of a permutation of the N training items, epoch e shuffled by (seed, e). A global
micro-batch is `world * batch_size` consecutive stream positions and process r takes the r-th slice of
`batch_size` of it. Hence
- W processes with batch b see exactly the items of one process with batch W*b (the all-reduced mean gradient is
  the single-process gradient of the same global batch);
- a run's data position is one number, the samples consumed so far, which resumes on any world size.
Batches may straddle an epoch boundary; nothing is dropped. Up to RANDPERM_MAX items an epoch's order is a
`torch.randperm`; above it (a corpus of billions of tokens) it is a keyed Feistel permutation evaluated only at the
positions in use, so the loader's memory does not grow with the corpus.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from ebt.errors import UserError
from ebt.noise import mix

RANDPERM_MAX = 1 << 22


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the n items in `epoch`, the same on every process."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def feistel_permute(i: Tensor, n: int, key: int, rounds: int = 4) -> Tensor:
    """P(i) for a pseudo-random bijection P of [0, n) chosen by `key`, without materialising it: a balanced Feistel
    network on 2h bits (2^2h >= n), cycle-walked (applied again to values >= n) until each value is inside [0, n)."""
    h = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << h) - 1
    keys = [mix(key, r) & 0x7FFFFFFF for r in range(rounds)]
    x = i.to(torch.int64).clone()
    todo = torch.ones_like(x, dtype=torch.bool)
    while bool(todo.any()):
        left, right = x[todo] >> h, x[todo] & mask
        for k in keys:   # every product stays below 2^63: its factors are below 2^32 and 2^31
            f = (right * 0x5BD1E995 + k) & 0xFFFFFFFF
            left, right = right, left ^ ((f ^ (f >> 13)) * 0x2C1B3C6D + k >> 11 & mask)
        x[todo] = (left << h) | right
        todo = x >= n
    return x


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
        if self.n > RANDPERM_MAX:
            for e in epochs.unique().tolist():
                sel = epochs == e
                out[sel] = feistel_permute(offsets[sel], self.n, mix(self.seed, e))
            return out
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
