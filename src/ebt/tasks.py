"""Tasks bind a RunConfig to its data and model for the generic training loop (`ebt.train`)."""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor, nn

from ebt import distributed as dist
from ebt import noise
from ebt.config import RunConfig
from ebt.data.text import ByteTokenizer, load_text, split_stream, token_stream
from ebt.errors import UserError
from ebt.train import autocast


def task_for(cfg):
    """The task a config trains: image denoising for an ImageRunConfig (task = "denoise"), else text."""
    if getattr(cfg, "task", None) == "denoise":
        from ebt.images.task import DenoiseTask

        return DenoiseTask(cfg)
    return TextTask(cfg)


class TextTask:
    """Next-token prediction on packed byte-level windows of the embedded corpus or a user's text."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.tokenizer = ByteTokenizer()
        if cfg.model.vocab_size < self.tokenizer.vocab_size:
            raise UserError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the byte tokenizer's 256: "
                            "set model.vocab_size=256")
        tokens = token_stream(load_text(cfg.data.path, cfg.data.max_chars), self.tokenizer)
        self.train_windows, self.val_windows = split_stream(tokens, cfg.data.val_fraction, cfg.model.context + 1)

    def describe(self) -> str:
        return self.cfg.model.kind

    def build_model(self) -> nn.Module:
        from ebt.lm import build_lm

        return build_lm(self.cfg)

    def train_batches(self, batch_size: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tensor]:
        """Batches of process `rank` of `world` from stream position `start` (samples consumed by all processes);
        the layout every task follows is `ebt.data.sharding`'s."""
        return self.train_windows.batches(batch_size, self.cfg.train.seed, start, rank, world)

    def evaluate(self, model: nn.Module, device, max_batches: int, batch_size: int, precision: str = "fp32") -> dict:
        return evaluate_windows(model, self.val_windows, device, max_batches, batch_size, precision)


@torch.no_grad()
def evaluate_windows(model: nn.Module, windows, device, max_batches: int, batch_size: int,
                     precision: str = "fp32", seed: int = 1234) -> dict:
    """Held-out CE and perplexity = exp(mean final-step CE over all tokens), not a mean of per-batch ppl.

    Windows are split across ranks and the sums all-reduced. The EBT's initial noise is drawn per window from
    (seed, window index) (`ebt.noise`), so evaluations of the same model agree on any number of processes.
    """
    was_training = model.training
    model.eval()
    n = min(len(windows), max_batches * batch_size * dist.world())  # the same windows on any world size
    mine = list(range(n))[dist.rank()::dist.world()]
    total = torch.zeros(2, dtype=torch.float64)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + dist.rank())
        for i in range(0, len(mine), batch_size):
            batch = windows.batch(mine[i:i + batch_size]).to(device)
            with autocast(device, precision), noise.per_sample(seed, mine[i:i + batch_size], key=0):
                out = model(batch, training=False)
            total += torch.tensor([out.final_ce.item() * out.tokens, out.tokens], dtype=torch.float64)
    model.train(was_training)
    total = dist.all_reduce_sum(total)
    ce = (total[0] / total[1].clamp_min(1)).item()
    return {"ce": ce, "ppl": math.exp(min(ce, 50.0)), "tokens": int(total[1].item())}
