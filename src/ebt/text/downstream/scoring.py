"""Scoring one model on one downstream task: perplexity of the whole formatted item (the reference's number) and of
its answer tokens only, in nats per token and bits per byte; multiple choice by lowest answer perplexity and, for
an EBT, by lowest answer energy; optionally exact match of greedy generations. Intervals are 95% percentile
bootstraps over items; with several seeds (the EBT's initial noise) each item's sums are averaged over seeds first.
"""
from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ebt.errors import UserError
from ebt.text.downstream.items import Item
from ebt.text.downstream.windows import ItemWindows
from ebt.text.evaluate import ITEM_COLUMNS, MAX_CE, evaluate_items, perplexity
from ebt.text.generation import SampleOptions, generate
from ebt.text.tokenizers import Tokenizer
from ebt.thinking import ThinkOptions
from ebt.training import distributed as dist

COL = {name: i for i, name in enumerate(ITEM_COLUMNS)}
BOOT = 1000


@dataclass
class Scoring:
    """How to score: windows, batching, seeds and thinking."""
    options: Optional[ThinkOptions] = None
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 16
    stride: Optional[int] = None
    """Sliding-window stride for items longer than the context (None: half the context; at most the context)."""
    generate_tokens: int = 0
    """> 0: also greedy-generate this many tokens per item for exact match."""
    multiple_choice: bool = True
    """Score every choice of multiple-choice items (False: the gold answer only)."""


def encode_pair(tokenizer: Tokenizer, prompt: str, answer: str, where: str) -> tuple[list[int], int]:
    """(ids of prompt + answer, index of the first answer token). The text is encoded whole when the prompt's own
    tokens are a prefix of it (true of byte-level BPEs, and it keeps SentencePiece-style tokenizers from adding a
    word marker to the answer), else prompt and answer are encoded apart and joined; either way the answer tokens
    decode to exactly the answer."""
    p, whole = tokenizer.encode(prompt), tokenizer.encode(prompt + answer)
    ids = whole if whole[:len(p)] == p else p + tokenizer.encode(answer)
    if len(ids) == len(p):
        raise UserError(f"{where}: the answer {answer!r} has no tokens: give every answer and choice some text")
    return ids, len(p)


def sequences(items: list[Item], tokenizer: Tokenizer) -> tuple[list[tuple[list[int], int]], list[list[int]]]:
    """Token sequences to score: every item's gold text first, then its other choices; and per item the sequence
    index of each choice (empty for generative items)."""
    seqs = [encode_pair(tokenizer, item.prompt, item.answer, f"item {i}") for i, item in enumerate(items)]
    choice_seqs = []
    for i, item in enumerate(items):
        index = []
        for c in item.choices:
            if c == item.answer:
                index.append(i)
            else:
                seqs.append(encode_pair(tokenizer, item.prompt, c, f"item {i}"))
                index.append(len(seqs) - 1)
        choice_seqs.append(index)
    return seqs, choice_seqs


def _ratio_ci(num: np.ndarray, den: np.ndarray, transform, rng: np.random.Generator) -> Optional[list[float]]:
    """95% bootstrap interval of transform(sum(num) / sum(den)) resampling items (None from fewer than 2)."""
    n = len(num)
    if n < 2:
        return None
    idx = rng.integers(0, n, size=(BOOT, n))
    values = transform(num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-12))
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


_EDGE = string.punctuation.replace("-", "") + string.whitespace


def normalise(text: str) -> str:
    """Lower case, punctuation stripped from the ends of each word (a leading minus sign kept), single spaces; text
    that is all punctuation (a Dyck closing sequence) keeps its symbols."""
    words = [w.strip(_EDGE) for w in text.lower().split()]
    words = [w if not w.endswith("-") else w.rstrip("-") for w in words]
    kept = " ".join(w for w in words if w)
    return kept or " ".join(text.split())


def generated_answer(text: str) -> str:
    """The answer in a generation: the line after its first '####' if it has one, else its first line."""
    if "####" in text:
        text = text.split("####", 1)[1]
    return text.strip().splitlines()[0] if text.strip() else ""


def exact_match(model, items: list[Item], tokenizer: Tokenizer, scoring: Scoring, seed: int) -> np.ndarray:
    """1.0 per item whose greedy generation (`generated_answer`, `normalise`d) equals one of its references, else
    0.0. Under torchrun each process generates its share of the items."""
    hits = torch.zeros(len(items), dtype=torch.float64)
    for k in range(dist.rank(), len(items), dist.world()):
        item = items[k]
        prompt = torch.tensor([tokenizer.encode(item.prompt)[-model.cfg.context:]])
        out = generate(model, prompt, SampleOptions(max_new_tokens=scoring.generate_tokens, temperature=0, seed=seed),
                       scoring.options)
        said = normalise(generated_answer(tokenizer.decode(out[0, prompt.shape[1]:].tolist())))
        hits[k] = float(bool(said) and said in {normalise(r) for r in item.references})
    return dist.all_reduce_sum(hits).numpy()


def score_task(model, items: list[Item], tokenizer: Tokenizer, scoring: Scoring) -> dict:
    """Metrics of one model on one task's items (see the module docstring)."""
    seqs, choice_seqs = sequences(items if scoring.multiple_choice else [Item(i.prompt, i.answer) for i in items],
                                  tokenizer)
    context = model.cfg.context
    stride = min(scoring.stride, context) if scoring.stride else max(1, context // 2)
    windows = ItemWindows(seqs, context, stride, tokenizer.token_bytes())
    runs = []
    for seed in scoring.seeds if model.can_think else scoring.seeds[:1]:   # only an EBT's prediction is random
        res = evaluate_items(model, windows, scoring.options, scoring.batch_size, seed, energies=any(choice_seqs))
        runs.append(res.sums.numpy())
    nfe, has_energy = res.nfe, res.has_energy
    sums = np.mean(runs, axis=0)                                      # (sequences, columns), averaged over seeds
    gold = sums[:len(items)]
    rng = np.random.default_rng(0)
    ln2 = math.log(2)

    def mean_ce(num, den):
        return float(num.sum() / max(den.sum(), 1e-12))

    out = {"items": len(items), "windows": len(windows), "nfe_per_token": nfe, "seeds": len(runs)}
    for prefix, ce, tok, nb in (("item", "ce", "tokens", "bytes"), ("answer", "answer_ce", "answer_tokens",
                                                                     "answer_bytes")):
        c, t, b = gold[:, COL[ce]], gold[:, COL[tok]], gold[:, COL[nb]]
        out[f"{prefix}_ce"] = mean_ce(c, t)
        out[f"{prefix}_ppl"] = perplexity(out[f"{prefix}_ce"])
        out[f"{prefix}_ppl_ci"] = _ratio_ci(c, t, lambda v: np.exp(np.minimum(v, MAX_CE)), rng)
        out[f"{prefix}_bpb"] = mean_ce(c, b) / ln2
        if len(runs) > 1:
            per_seed = [perplexity(mean_ce(r[:len(items), COL[ce]], r[:len(items), COL[tok]])) for r in runs]
            out[f"{prefix}_ppl_seed_std"] = float(np.std(per_seed, ddof=1))
    mc = [(i, idx) for i, idx in enumerate(choice_seqs) if idx]
    if mc:
        answer_mean = sums[:, COL["answer_ce"]] / np.maximum(sums[:, COL["answer_tokens"]], 1)
        energy_mean = sums[:, COL["answer_energy"]] / np.maximum(sums[:, COL["answer_tokens"]], 1)
        by_ppl = np.array([float(int(np.argmin(answer_mean[idx])) in items[i].correct) for i, idx in mc])
        out["mc_items"] = len(mc)
        out["mc_chance"] = float(np.mean([len(items[i].correct) / len(idx) for i, idx in mc]))
        out["mc_acc_ppl"] = float(by_ppl.mean())
        out["mc_acc_ppl_ci"] = _ratio_ci(by_ppl, np.ones_like(by_ppl), lambda v: v, rng)
        if has_energy:
            by_energy = np.array([float(int(np.argmin(energy_mean[idx])) in items[i].correct) for i, idx in mc])
            out["mc_acc_energy"] = float(by_energy.mean())
            out["mc_acc_energy_ci"] = _ratio_ci(by_energy, np.ones_like(by_energy), lambda v: v, rng)
    if scoring.generate_tokens > 0 and any(item.references for item in items):
        hits = exact_match(model, items, tokenizer, scoring, scoring.seeds[0])
        out["exact_match"] = float(hits.mean())
        out["exact_match_ci"] = _ratio_ci(hits, np.ones_like(hits), lambda v: v, rng)
    return out

