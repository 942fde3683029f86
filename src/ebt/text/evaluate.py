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
from ebt.text.data import PackedWindows
from ebt.text.models import PAD_ID, cross_entropy
from ebt.thinking import ThinkOptions
from ebt.training import distributed as dist
from ebt.training.devices import autocast


@torch.no_grad()
def evaluate_text(model: nn.Module, windows: PackedWindows, options: Optional[ThinkOptions] = None,
                  max_windows: int = 64, batch_size: int = 16, seed: int = 1234, device=None,
                  precision: str = "fp32") -> dict:
    """{"ce", "ppl", "tokens", "nfe_per_token"} and, when the windows know their tokenizer's bytes per token,
    "bpb" (bits per byte of text: CE summed over targets / ln 2 / their bytes, comparable across tokenizers), over the
    first `max_windows` windows, thinking with `options`."""
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = min(len(windows), max_windows)
    mine = list(range(n))[dist.rank()::dist.world()]
    samples = options.samples if options is not None else 1
    total = torch.zeros(3, dtype=torch.float64)                    # (sum of CE x tokens, tokens, bytes)
    token_bytes = windows.token_bytes if windows.token_bytes is not None else torch.zeros(1, dtype=torch.long)
    nfe = 1
    for i in range(0, len(mine), batch_size):
        index = mine[i:i + batch_size]
        batch = windows.batch(index).to(device)                    # (B, L+1)
        x, y = batch[:, :-1], batch[:, 1:]
        rows = [w * samples + j for w in index for j in range(samples)]   # candidate rows, as `think` lays them out
        with autocast(device, precision), noise.per_sample(seed, rows, key=0):
            pred = model.predict(x, options)
        target = y != PAD_ID
        count = int(target.sum())
        nbytes = int(token_bytes[y[target].cpu()].sum())
        total += torch.tensor([cross_entropy(pred.logits, y).item() * count, count, nbytes], dtype=torch.float64)
        nfe = pred.nfe
    model.train(was_training)
    total = dist.all_reduce_sum(total)
    ce = (total[0] / total[1].clamp_min(1)).item()
    res = {"ce": ce, "ppl": math.exp(min(ce, 50.0)), "tokens": int(total[1].item()), "nfe_per_token": nfe}
    if windows.token_bytes is not None:
        res["bpb"] = (total[0] / math.log(2) / total[2].clamp_min(1)).item()
    return res
