"""Held-out evaluation of a checkpoint: cross-entropy, perplexity and forward passes per token, with optional
System 2 thinking for EBTs."""
from __future__ import annotations

import math
from typing import Optional

import torch

from ebt.data.text import ByteTokenizer, PackedWindows, load_text, split_stream, token_stream
from ebt.errors import UserError
from ebt.inference import ThinkOptions, think
from ebt.lm import PAD_ID, cross_entropy


def windows_for(text: str, context: int) -> PackedWindows:
    return PackedWindows(token_stream(text, ByteTokenizer()), context + 1)


@torch.no_grad()
def evaluate_text(model, windows: PackedWindows, think_opts: Optional[ThinkOptions] = None, max_windows: int = 64,
                  batch_size: int = 16, seed: int = 1234, device="cpu") -> dict:
    """CE / perplexity (exp of the token-weighted mean CE) and NFE per token over up to `max_windows` windows."""
    if think_opts is not None and model.kind != "ebt":
        raise UserError("thinking options need an EBT checkpoint; this one is a Transformer++")
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    n = min(len(windows), max_windows)
    ce_sum, tokens, nfe = 0.0, 0, 1
    for i in range(0, n, batch_size):
        batch = windows.batch(range(i, min(n, i + batch_size))).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        if model.kind == "ebt":
            res = think(model, x, think_opts, generator=gen, final_energy=False)
            logits, nfe = res.logits, res.nfe
        else:
            logits = model.net(x)
        count = int((y != PAD_ID).sum())
        ce_sum += cross_entropy(logits, y).item() * count
        tokens += count
    ce = ce_sum / max(tokens, 1)
    return {"ce": ce, "ppl": math.exp(min(ce, 50.0)), "tokens": tokens, "nfe_per_token": nfe}


def heldout_windows(cfg, data_path: Optional[str]) -> PackedWindows:
    """The checkpoint's own held-out split of the embedded corpus, or all of a user's file as held-out text."""
    if data_path is None:
        tokens = token_stream(load_text(None, cfg.data.max_chars))
        return split_stream(tokens, cfg.data.val_fraction, cfg.model.context + 1)[1]
    return windows_for(load_text(data_path), cfg.model.context)
