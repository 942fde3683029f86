"""Text in memory and packed fixed-length windows.

`load_text` reads the embedded corpus or a user's text files (`ebt.text.corpus`); `token_stream` tokenizes it;
documents are concatenated into one token stream and cut into non-overlapping windows of context+1 tokens (the
reference truncates each document instead). Token shards on disk (`ebt.text.shards`) give the same windows.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from ebt.errors import UserError
from ebt.text.corpus import embedded_corpus, read_documents
from ebt.text.tokenizers import ByteTokenizer, Tokenizer
from ebt.training.sharding import sharded_indices


def load_text(path: Optional[str], max_chars: int = 0, errors: str = "strict", encoding: str = "utf-8") -> str:
    text = embedded_corpus() if path is None else "\n\n".join(read_documents(path, errors, encoding))
    if max_chars:
        text = text[:max_chars]
    if not text.strip():
        raise UserError(f"the data at {path!r} is empty: give a file with text in it")
    return text


def token_stream(text: str, tokenizer: Optional[Tokenizer] = None) -> Tensor:
    tok = tokenizer or ByteTokenizer()
    return torch.tensor(tok.encode(text), dtype=torch.long)


def _read(part, a: int, b: int) -> Tensor:
    """Tokens [a, b) of a part (a tensor, or a numpy array or `TokenFile` of uint16/uint32 tokens) as int64."""
    piece = part[a:b]
    return piece if isinstance(piece, Tensor) else torch.from_numpy(np.asarray(piece, dtype=np.int64))


class PackedWindows:
    """Non-overlapping windows of `length` tokens cut from a token stream, optionally sharded across ranks.

    The stream is one tensor, or consecutive parts (token shards on disk, `ebt.text.shards.TokenFile`) read only
    where a window falls, so a corpus larger than memory streams from disk; a window may run from one part into the
    next.
    `token_bytes` (V,): bytes of text per token id, for bits per byte (None: not reported)."""

    def __init__(self, tokens, length: int, token_bytes: Optional[Tensor] = None):
        self.parts = [p for p in (tokens if isinstance(tokens, (list, tuple)) else [tokens]) if len(p)]
        self.ends = np.cumsum([len(p) for p in self.parts], dtype=np.int64)   # (parts,) end offset of each part
        self.length, self.token_bytes = length, token_bytes
        total = int(self.ends[-1]) if self.parts else 0
        self.count = total // length
        if self.count == 0:
            raise UserError(f"the text has {total} tokens, fewer than one window of {length}: "
                            "use more data or a smaller model.context")

    def __len__(self) -> int:
        return self.count

    def window(self, i: int) -> Tensor:
        start, stop = i * self.length, (i + 1) * self.length
        k = int(np.searchsorted(self.ends, start, side="right"))
        pieces = []
        while start < stop:
            first = int(self.ends[k]) - len(self.parts[k])
            end = min(stop, int(self.ends[k]))
            pieces.append(_read(self.parts[k], start - first, end - first))
            start, k = end, k + 1
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def batch(self, indices) -> Tensor:
        return torch.stack([self.window(int(i)) for i in indices])  # (B, length)

    def half(self, which: str, limit: Optional[int] = None) -> "PackedWindows":
        """The first ("tune") or second ("report") half of the windows, at most `limit` of them: settings chosen on
        one half are reported on the other. Fewer than two windows cannot be split."""
        if which not in ("tune", "report"):
            raise ValueError(f"half must be tune or report, got {which!r}")
        if self.count < 2:
            raise UserError(f"{self.count} window cannot be split into tuning and report halves: use more text")
        lo, hi = (0, self.count // 2) if which == "tune" else (self.count // 2, self.count)
        hi = hi if limit is None else min(hi, lo + limit)
        return PackedWindows(self.batch(range(lo, hi)).flatten(), self.length, self.token_bytes)

    def batches(self, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tensor]:
        """Endless (B, length) batches of process `rank` of `world`; `start` = samples all processes consumed before
        (exact resume on any world size). The layout is `ebt.training.sharding`'s: W processes with batch b see the
        windows of one process with batch W*b."""
        for indices in sharded_indices(self.count, batch_size, seed, start, rank, world):
            yield self.batch(indices)


def split_stream(tokens: Tensor, val_fraction: float, window: int,
                 token_bytes: Optional[Tensor] = None) -> tuple[PackedWindows, PackedWindows]:
    """Hold out the tail of the stream for validation (at least one window)."""
    n_val = max(window, int(tokens.numel() * val_fraction))
    if tokens.numel() - n_val < window:
        raise UserError(f"the text has {tokens.numel()} tokens: too few for a training and a validation window "
                        f"of {window}: use more data or a smaller model.context")
    return PackedWindows(tokens[:-n_val], window, token_bytes), PackedWindows(tokens[-n_val:], window, token_bytes)
