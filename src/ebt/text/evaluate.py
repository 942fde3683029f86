"""The one held-out evaluator of text models: training validation, `ebt eval`, the thinking sweep and the
experiments all call `evaluate_text`.

Cross-entropy is the token-weighted mean over non-pad targets, perplexity its exponential (not a mean of per-batch
perplexities). Windows are split across processes under torchrun and the sums all-reduced; an EBT's initial noise
is drawn per (window, sample) from the seed (`ebt.noise`), so an evaluation gives the same numbers on any number of
processes and with any batch size.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ebt import noise
from ebt.text.data import ByteTokenizer, PackedWindows, load_text, split_stream, token_stream
from ebt.text.models import PAD_ID, cross_entropy
from ebt.thinking import ThinkOptions
from ebt.training import distributed as dist
from ebt.training.devices import autocast


def windows_for(text: str, context: int) -> PackedWindows:
    return PackedWindows(token_stream(text, ByteTokenizer()), context + 1)


def heldout_windows(cfg, data_path: Optional[str]) -> PackedWindows:
    """The run's own held-out split of the embedded corpus, or all of a user's file as held-out text."""
    if data_path is None:
        tokens = token_stream(load_text(None, cfg.data.max_chars))
        return split_stream(tokens, cfg.data.val_fraction, cfg.model.context + 1)[1]
    return windows_for(load_text(data_path, errors=cfg.data.errors, encoding=cfg.data.encoding), cfg.model.context)


@torch.no_grad()
def evaluate_text(model: nn.Module, windows: PackedWindows, options: Optional[ThinkOptions] = None,
                  max_windows: int = 64, batch_size: int = 16, seed: int = 1234, device=None,
                  precision: str = "fp32") -> dict:
    """{"ce", "ppl", "tokens", "nfe_per_token"} over the first `max_windows` windows, thinking with `options`."""
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = min(len(windows), max_windows)
    mine = list(range(n))[dist.rank()::dist.world()]
    samples = options.samples if options is not None else 1
    total = torch.zeros(2, dtype=torch.float64)                    # (sum of CE x tokens, tokens)
    nfe = 1
    for i in range(0, len(mine), batch_size):
        index = mine[i:i + batch_size]
        batch = windows.batch(index).to(device)                    # (B, L+1)
        x, y = batch[:, :-1], batch[:, 1:]
        rows = [w * samples + j for w in index for j in range(samples)]   # candidate rows, as `think` lays them out
        with autocast(device, precision), noise.per_sample(seed, rows, key=0):
            pred = model.predict(x, options)
        count = int((y != PAD_ID).sum())
        total += torch.tensor([cross_entropy(pred.logits, y).item() * count, count], dtype=torch.float64)
        nfe = pred.nfe
    model.train(was_training)
    total = dist.all_reduce_sum(total)
    ce = (total[0] / total[1].clamp_min(1)).item()
    return {"ce": ce, "ppl": math.exp(min(ce, 50.0)), "tokens": int(total[1].item()), "nfe_per_token": nfe}
