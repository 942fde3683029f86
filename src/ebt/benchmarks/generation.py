"""`ebt bench generate`: tokens/s of greedy generation through each inference path, side by side in one process.

Paths (`ebt.models.explicit.inference_path`): autograd (the training modules and the autograd tape, as before the
explicit passes), explicit (the default), compiled (the explicit passes through torch.compile; its compile time is
reported apart and excluded from tokens/s). Rounds are interleaved and medians reported, so machine noise hits every
path alike; greedy tokens are checked identical across paths.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch.profiler import profile

from ebt.benchmarks.train_step import resolve_device, sync
from ebt.config import ModelConfig, ThinkConfig
from ebt.errors import UserError
from ebt.models.explicit import PATHS, inference_path
from ebt.text.generation import decode
from ebt.text.models import TextEBT, TextTransformer


def _greedy(net, ids: torch.Tensor, new: int, path: str, use_cache: bool = True) -> list:
    """The `new` greedy decoding steps (`_tokens_and_logits` reads them); the EBT's starting noise comes from one
    seed, the same for every path."""
    gen = torch.Generator(ids.device).manual_seed(0)
    with inference_path(path):
        return list(decode(net, ids, new, None, use_cache, lambda logits: logits.argmax(-1), gen))


def _tokens_and_logits(steps: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens (B, new) and the logits they were chosen from (B, new, V), stacked outside the timed calls."""
    return torch.stack([s.token for s in steps], 1), torch.stack([s.logits for s in steps], 1)


def _dispatched(event) -> bool:
    """An operator called from Python or an autograd Function, not from inside another operator."""
    if not event.name.startswith("aten::"):
        return False
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def ops_per_token(net, ids: torch.Tensor, path: str, tokens: int = 8) -> float:
    """Operator calls per generated token, counting those made from Python or autograd Functions but not the ones
    operators make internally (profiled; the prompt's cache is built in both counts and cancels out)."""
    counts = []
    for n in (1, 1 + tokens):
        with profile() as prof:
            _greedy(net, ids, n, path)
        counts.append(sum(1 for e in prof.events() if _dispatched(e)))
    return round((counts[1] - counts[0]) / tokens, 1)


def generate_speed(model: str = "ebt", dim: int = 128, layers: int = 4, heads: int = 4, ctx: int = 256,
                   vocab: int = 256, prompt: int = 224, new: int = 32, batch: int = 1, landscapes: int = 2,
                   conditioning: str = "pred_embed", paths: tuple[str, ...] = ("autograd", "explicit"),
                   uncached: bool = False, reps: int = 3, threads: int = 0, device: str = "auto",
                   count_ops: bool = True) -> dict:
    """Tokens/s of greedy generation (random weights; EBT: the trained schedule of `landscapes` steps) through each
    of `paths` with the KV cache, and (uncached) the first path recomputing the context for every token.
    tokens_per_s: the prompt's prefill and `new` tokens, end to end; decode_tokens_per_s: the tokens after the
    first, from the difference with a run of one new token (the prefill cancels)."""
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    if prompt + new > ctx:
        raise UserError(f"--prompt {prompt} + --new {new} exceeds --ctx {ctx}")
    bad = [p for p in paths if p not in PATHS]
    if bad or not paths:
        raise UserError(f"--paths must list some of {', '.join(PATHS)}, got {','.join(paths)}")
    torch.manual_seed(0)
    mc = ModelConfig(kind="transformer" if model == "transformer" else "ebt", vocab_size=vocab, dim=dim,
                     layers=layers, heads=heads, context=ctx, conditioning=conditioning)
    net = (TextTransformer(mc) if model == "transformer" else TextEBT(mc, ThinkConfig(landscapes=landscapes)))
    net = net.to(dev).eval()
    ids = torch.randint(1, vocab, (batch, prompt), device=dev)
    modes = {p: (p, True) for p in paths}
    if uncached:
        modes[f"{paths[0]}_uncached"] = (paths[0], False)
    compile_s = None
    if "compiled" in paths:   # first use compiles (once per process): timed apart
        t0 = time.perf_counter()
        _greedy(net, ids, new, "compiled")
        sync(dev)
        compile_s = round(time.perf_counter() - t0, 1)
    times = {m: [] for m in modes}
    firsts = {m: [] for m in modes}   # the prompt and the first token alone: what decoding adds is the difference
    tokens, logits = {}, {}
    for rep in range(reps + 1):  # the first round is warm-up
        for mode, (path, cached) in modes.items():
            for n, into in ((new, times), (1, firsts)):
                sync(dev)
                t0 = time.perf_counter()
                steps = _greedy(net, ids, n, path, cached)
                sync(dev)
                if rep:
                    into[mode].append(time.perf_counter() - t0)
                if n == new:
                    tokens[mode], out_logits = _tokens_and_logits(steps)
                    logits[mode] = out_logits.double()
    tps = {m: round(batch * new / statistics.median(t), 1) for m, t in times.items()}
    decode_s = {m: max(1e-9, statistics.median(times[m]) - statistics.median(firsts[m])) for m in modes}
    decode_tps = {m: round(batch * (new - 1) / s, 1) for m, s in decode_s.items()} if new > 1 else {}
    base = paths[0]
    out = {"model": model, "conditioning": conditioning if model != "transformer" else None, "device": str(dev),
           "batch": batch, "context": prompt + new, "new_tokens": new, "dim": dim, "layers": layers,
           "threads": torch.get_num_threads(), "reps": reps, "tokens_per_s": tps,
           f"speedup_vs_{base}": {m: round(v / tps[base], 2) for m, v in tps.items()},
           "decode_tokens_per_s": decode_tps,
           f"decode_speedup_vs_{base}": {m: round(v / decode_tps[base], 2) for m, v in decode_tps.items()},
           "identical_tokens": all(torch.equal(t, tokens[base]) for t in tokens.values()),
           # the tokens alone are a weak check: a random-weight EBT's logits are far apart (trained step size)
           "max_logit_relative_difference": max(((lg - logits[base]).norm() / logits[base].norm()).item()
                                                for lg in logits.values())}
    if compile_s is not None:
        out["compile_s"] = compile_s
    if count_ops and dev.type == "cpu":
        out["ops_per_token"] = {p: ops_per_token(net, ids, p) for p in paths}
    return out
