"""Separate token sequences (downstream items) as model windows for `ebt.text.evaluate.evaluate_items`.

A sequence that fits the model's window (context + 1 tokens) is one window, padded on the right (pads are never
targets, and a causal model's earlier positions do not see them). A longer one slides: each next window ends
`stride` tokens further on and scores only the targets the previous windows did not, so every target is scored
exactly once, with at least context - stride + 1 tokens of left context once the first window is full.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ebt.errors import UserError
from ebt.text.models import PAD_ID

PROMPT, ANSWER = 1, 2   # roles of scored targets


class ItemWindows:
    def __init__(self, sequences: list[tuple[list[int], int]], context: int, stride: int, token_bytes: Tensor):
        """sequences: (token ids, index of the first answer token) each; token_bytes (V,) bytes per token id."""
        if not 1 <= stride <= context:
            raise UserError(f"the sliding-window stride must be in 1..context ({context}), got {stride}")
        self.length, self.token_bytes, self.seqs = context + 1, token_bytes, sequences
        self.spans: list[tuple[int, int, int]] = []   # (sequence, first token, first scored token) per window
        for s, (ids, _) in enumerate(sequences):
            end = min(len(ids), self.length)
            self.spans.append((s, 0, 1))
            while end < len(ids):
                new_end = min(len(ids), end + stride)
                self.spans.append((s, new_end - self.length, end))
                end = new_end
        self.owner = torch.tensor([s for s, _, _ in self.spans], dtype=torch.long)   # (windows,)
        self.sequences = len(sequences)

    def __len__(self) -> int:
        return len(self.spans)

    def batch(self, index: list[int]) -> Tensor:
        """(B, context + 1) tokens, PAD_ID after a sequence's end."""
        out = torch.full((len(index), self.length), PAD_ID, dtype=torch.long)
        for row, w in enumerate(index):
            s, start, _ = self.spans[w]
            piece = self.seqs[s][0][start:start + self.length]
            out[row, :len(piece)] = torch.tensor(piece, dtype=torch.long)
        return out

    def roles(self, index: list[int]) -> Tensor:
        """(B, context) role of each target of the windows: 0 (not scored in this window), PROMPT or ANSWER."""
        out = torch.zeros(len(index), self.length - 1, dtype=torch.long)
        for row, w in enumerate(index):
            s, start, first = self.spans[w]
            ids, answer_start = self.seqs[s]
            position = torch.arange(start + 1, start + self.length)                 # token index of each target
            scored = (position >= first) & (position < len(ids))
            out[row] = torch.where(scored, torch.where(position >= answer_start, ANSWER, PROMPT), 0)
        return out
