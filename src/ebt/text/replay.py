"""Replay buffer for System 2 training (docs/reference.md §5).

A FIFO of recent training windows together with the final prediction logits the model reached for them. Each
training batch appends a fraction of replayed windows, whose descent restarts from the stored logits instead of
noise: this simulates longer optimisation trajectories and so shapes the energy landscape near its minima.

The reference keeps full (L, V) float32 logits on the GPU: 192 x 256 x 50 277 x 4 bytes = 9.9 GB. Here a record is
stored compactly, either
- dense in reduced precision (`dtype`, bfloat16 by default: half the memory, ~3 significant digits), or
- top-k (`topk` > 0): the k largest logits of each position (in `dtype`), their indices, and the mean of the
  other V - k logits, which fills those entries on replay. The tail of the distribution is flattened to one
  value; since replayed states then get Langevin noise (std 3 in the reference) and a softmax, only the head
  matters much. docs/s2.md measures what both approximations cost.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ebt.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Record:
    ids: Tensor
    """Token window (L+1,) int64: inputs and targets, as the batch row it came from."""
    values: Tensor
    """(L, V) stored logits, or (L, k) top-k logits, in the storage dtype."""
    index: Optional[Tensor] = None
    """(L, k) vocabulary index of each kept logit (top-k only; int16 when V allows it)."""
    rest: Optional[Tensor] = None
    """(L, 1) float32 mean of the logits that were not kept (top-k only)."""

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.ids, self.values, self.index, self.rest)
                   if t is not None)


def record_bytes(length: int, vocab: int, dtype: str = "float32", topk: int = 0) -> int:
    """Bytes of the logits of one record of `length` positions (token ids excluded), without allocating it."""
    size = DTYPES[dtype].itemsize
    if not topk or topk >= vocab:
        return length * vocab * size
    index_size = 2 if vocab <= torch.iinfo(torch.int16).max else 4
    return length * (topk * (size + index_size) + 4)


class ReplayBuffer:
    """FIFO of `size` records; `sample` draws without replacement, `push` drops the oldest when full."""

    def __init__(self, size: int, dtype: str = "bfloat16", topk: int = 0):
        if size < 1:
            raise UserError(f"replay buffer size must be >= 1, got {size}")
        if dtype not in DTYPES:
            raise UserError(f"replay dtype {dtype!r} is not known: use one of {', '.join(DTYPES)}")
        self.size, self.dtype, self.topk = size, DTYPES[dtype], topk
        self.records: deque[Record] = deque(maxlen=size)
        self.shape: Optional[tuple[int, int]] = None  # (L+1, V) shared by every record

    def __len__(self) -> int:
        return len(self.records)

    def clear(self) -> None:
        self.records.clear()
        self.shape = None

    @torch.no_grad()
    def push(self, ids: Tensor, logits: Tensor) -> None:
        """Store each row of ids (B, L+1) with its final logits (B, L, V), oldest records first out."""
        shape = (ids.shape[1], logits.shape[-1])
        if self.shape != shape:  # windows of another length cannot be appended to a batch: start afresh
            self.clear()
            self.shape = shape
        ids, logits = ids.detach(), logits.detach().float()
        V = logits.shape[-1]
        if self.topk and self.topk < V:
            values, index = logits.topk(self.topk, dim=-1)                                 # (B, L, k)
            rest = (logits.sum(-1, keepdim=True) - values.sum(-1, keepdim=True)) / (V - self.topk)  # (B, L, 1)
            index = index.to(torch.int16 if V <= torch.iinfo(torch.int16).max else torch.int32)
            values = values.to(self.dtype)
            for b in range(ids.shape[0]):
                self.records.append(Record(ids[b].clone(), values[b].clone(), index[b].clone(), rest[b].clone()))
        else:
            values = logits.to(self.dtype)
            for b in range(ids.shape[0]):
                self.records.append(Record(ids[b].clone(), values[b].clone()))

    def decode(self, rec: Record) -> Tensor:
        """The stored logits of one record as float32 (L, V)."""
        if rec.index is None:
            return rec.values.float()
        L = rec.values.shape[0]
        out = rec.rest.expand(L, self.shape[1]).clone()                                     # (L, V)
        return out.scatter_(-1, rec.index.long(), rec.values.float())

    def sample(self, n: int, window: int, rng: Optional[random.Random] = None) -> Optional[tuple[Tensor, Tensor]]:
        """Up to n records drawn without replacement, as (ids (n, L+1), logits (n, L, V) float32); None when
        there is nothing to replay for windows of `window` = L+1 tokens."""
        n = min(n, len(self.records))
        if n < 1 or self.shape is None or self.shape[0] != window:
            return None
        picks = (rng or random).sample(range(len(self.records)), n)
        recs = [self.records[i] for i in picks]
        return torch.stack([r.ids for r in recs]), torch.stack([self.decode(r) for r in recs])
