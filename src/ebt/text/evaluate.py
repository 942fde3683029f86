"""The one held-out evaluator of text models: training validation, `ebt eval`, the thinking sweep, the downstream
tasks and the experiments all score tokens with `token_scores`, through `evaluate_text` (packed windows of a
stream) or `evaluate_items` (windows cut from separate items, summed per item).

Cross-entropy is the token-weighted mean over non-pad targets, perplexity its exponential (not a mean of per-batch
perplexities). Windows are split across processes under torchrun and the sums all-reduced; an EBT's initial noise
is drawn per (window, sample) from the seed (`ebt.noise`), so an evaluation gives the same numbers on any number of
processes and with any batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt import noise
from ebt.ops.common import upcast
from ebt.text.data import PackedWindows
from ebt.text.models import PAD_ID
from ebt.thinking import ThinkOptions
from ebt.training import distributed as dist
from ebt.training.devices import autocast


MAX_CE = 50.0   # perplexities are reported as exp(min(ce, MAX_CE)): finite even for a diverged model


def perplexity(ce: float) -> float:
    """exp(cross-entropy), capped so that a diverged model still reports a finite number."""
    return math.exp(min(ce, MAX_CE))


def ppl_change_pct(ce: float, base_ce: float) -> float:
    """The % change of perplexity from cross-entropy base_ce to ce: 100 (exp(ce - base_ce) - 1), from the
    cross-entropies, so it stays right where both perplexities are capped (a diverged model); a rise of more than
    MAX_CE nats is capped like a perplexity."""
    return 100.0 * math.expm1(min(ce - base_ce, MAX_CE))


@dataclass
class TokenScores:
    """Scores of one batch of windows (B, L+1): targets y = window[:, 1:]."""
    targets: Tensor
    """(B, L) token ids; PAD_ID where nothing is scored."""
    ce: Tensor
    """(B, L) float64 cross-entropy of each target from the (thought-out) logits, 0 at pads."""
    energy: Optional[Tensor]
    """(B, L) float64 energy of each target as a one-hot candidate (models with an energy, when asked), else None."""
    nfe: int


@torch.no_grad()
def token_scores(model: nn.Module, batch: Tensor, index: list[int], options: Optional[ThinkOptions], seed: int,
                 precision: str = "fp32", energies: bool = False) -> TokenScores:
    """Score windows `batch` (B, L+1), whose global window numbers are `index` (they key the initial noise)."""
    x, y = batch[:, :-1], batch[:, 1:]
    samples = options.samples if options is not None else 1
    rows = [w * samples + j for w in index for j in range(samples)]   # candidate rows, as `think` lays them out
    with autocast(batch.device, precision), noise.per_sample(seed, rows, key=0):
        pred = model.predict(x, options)
        energy = model.target_energy(x, y) if energies else None
    ce = F.cross_entropy(upcast(pred.logits).flatten(0, 1), y.flatten(), ignore_index=PAD_ID, reduction="none")
    ce = ce.view_as(y).double()
    return TokenScores(y, ce, None if energy is None else energy.double() * (y != PAD_ID), pred.nfe)


def _evaluating(model: nn.Module) -> bool:
    """Put `model` in eval mode; returns whether it was training."""
    was_training = model.training
    model.eval()
    return was_training


@torch.no_grad()
def evaluate_text(model: nn.Module, windows: PackedWindows, options: Optional[ThinkOptions] = None,
                  max_windows: int = 64, batch_size: int = 16, seed: int = 1234, device=None,
                  precision: str = "fp32") -> dict:
    """{"ce", "ppl", "tokens", "nfe_per_token"} and, when the windows know their tokenizer's bytes per token,
    "bpb" (bits per byte of text: CE summed over targets / ln 2 / their bytes, comparable across tokenizers), over the
    first `max_windows` windows, thinking with `options`."""
    device = device if device is not None else next(model.parameters()).device
    was_training = _evaluating(model)
    n = min(len(windows), max_windows)
    mine = list(range(n))[dist.rank()::dist.world()]
    total = torch.zeros(3, dtype=torch.float64)                    # (sum of CE x tokens, tokens, bytes)
    token_bytes = windows.token_bytes
    nfe = 1
    for i in range(0, len(mine), batch_size):
        index = mine[i:i + batch_size]
        s = token_scores(model, windows.batch(index).to(device), index, options, seed, precision)
        y = s.targets.cpu()
        target = y != PAD_ID
        nbytes = token_bytes[y[target]].sum().double() if token_bytes is not None else torch.zeros((), dtype=torch.float64)
        total += torch.stack([s.ce.sum().cpu(), target.sum().double(), nbytes])
        nfe = s.nfe
    model.train(was_training)
    total = dist.all_reduce_sum(total)
    ce = (total[0] / total[1].clamp_min(1)).item()
    res = {"ce": ce, "ppl": perplexity(ce), "tokens": int(total[1].item()), "nfe_per_token": nfe}
    if windows.token_bytes is not None:
        res["bpb"] = (total[0] / math.log(2) / total[2].clamp_min(1)).item()
    return res


# columns of `evaluate_items`' per-sequence sums
ITEM_COLUMNS = ("ce", "tokens", "bytes", "answer_ce", "answer_tokens", "answer_bytes", "answer_energy")


@dataclass
class ItemScores:
    sums: Tensor
    """(sequences, len(ITEM_COLUMNS)) float64 sums per sequence."""
    nfe: int
    """Energy forward passes per token."""
    has_energy: bool
    """Whether the answer_energy column holds energies (the model has an energy and they were asked for)."""


@torch.no_grad()
def evaluate_items(model: nn.Module, windows, options: Optional[ThinkOptions] = None, batch_size: int = 16,
                   seed: int = 1234, device=None, precision: str = "fp32", energies: bool = False) -> ItemScores:
    """Per-sequence sums over `windows` (`ebt.text.downstream.windows.ItemWindows`: windows cut from S separate token
    sequences, each target scored in exactly one window). The answer columns count only the targets the windows
    mark as answer tokens; answer_energy (with energies=True, for a model that has an energy) sums the energies of
    the answer tokens as one-hot candidates."""
    device = device if device is not None else next(model.parameters()).device
    was_training = _evaluating(model)
    mine = list(range(len(windows)))[dist.rank()::dist.world()]
    sums = torch.zeros(windows.sequences, len(ITEM_COLUMNS), dtype=torch.float64)
    token_bytes = windows.token_bytes.double()
    nfe, has_energy = 1, False
    for i in range(0, len(mine), batch_size):
        index = mine[i:i + batch_size]
        s = token_scores(model, windows.batch(index).to(device), index, options, seed, precision, energies)
        has_energy = s.energy is not None
        role = windows.roles(index)                                # (B, L): 0 not scored here, 1 prompt, 2 answer
        scored, answer = (role > 0).double(), (role == 2).double()
        ce, nbytes = s.ce.cpu() * scored, token_bytes[s.targets.cpu()]
        energy = s.energy.cpu() if s.energy is not None else torch.zeros_like(ce)
        per_window = torch.stack([ce.sum(1), scored.sum(1), (nbytes * scored).sum(1),
                                  (ce * answer).sum(1), answer.sum(1), (nbytes * answer).sum(1),
                                  (energy * answer).sum(1)], dim=1)           # (B, columns)
        sums.index_add_(0, windows.owner[index], per_window)
        nfe = s.nfe
    model.train(was_training)
    has_energy = bool(dist.all_reduce_sum(torch.tensor([float(has_energy)])).item() > 0)
    return ItemScores(dist.all_reduce_sum(sums), nfe, has_energy)
