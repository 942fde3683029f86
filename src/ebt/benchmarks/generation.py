"""`ebt bench generate`: tokens/s of greedy generation with and without the KV cache."""
from __future__ import annotations

import statistics
import time

import torch

from ebt.benchmarks.train_step import resolve_device, sync
from ebt.config import ModelConfig, ThinkConfig
from ebt.errors import UserError
from ebt.text.generation import decode
from ebt.text.models import TextEBT, TextTransformer


def generate_speed(model: str = "ebt", dim: int = 128, layers: int = 4, heads: int = 4, ctx: int = 128,
                   vocab: int = 256, prompt: int = 16, new: int = 32, reps: int = 3, threads: int = 0,
                   device: str = "auto") -> dict:
    """Tokens/s of greedy generation with and without the KV cache (random weights; EBT: the trained schedule)."""
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    if prompt + new > ctx:
        raise UserError(f"--prompt {prompt} + --new {new} exceeds --ctx {ctx}")
    torch.manual_seed(0)
    mc = ModelConfig(kind="transformer" if model == "transformer" else "ebt", vocab_size=vocab, dim=dim,
                     layers=layers, heads=heads, context=ctx, conditioning="pred_embed")
    net = (TextTransformer(mc) if model == "transformer" else TextEBT(mc, ThinkConfig(landscapes=2))).to(dev).eval()
    ids = torch.randint(1, vocab, (1, prompt), device=dev)
    times = {"cached": [], "uncached": []}
    for rep in range(reps + 1):  # the first round is warm-up
        for mode in times:
            sync(dev)
            t0 = time.perf_counter()
            for _ in decode(net, ids, new, None, mode == "cached", lambda lg: lg.argmax(-1)):
                pass
            sync(dev)
            if rep:
                times[mode].append(time.perf_counter() - t0)
    tps = {m: round(new / statistics.median(t), 1) for m, t in times.items()}
    return {"model": model, "device": str(dev), "tokens_per_s": tps, "speedup": round(tps["cached"] / tps["uncached"], 2)}
