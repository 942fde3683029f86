"""Query blocks for the prediction attention (`model.attn_query_blocks`): time of the attention passes alone.

Each block of prediction rows attends only to the observed keys its rows may see (causal: rows a..b-1 need keys
0..b-1), so the masked part of the L x S work is skipped (`query_blocked_attention`). Times the training pattern
(forward, input gradient with create_graph, and the backward of both) against one block, in interleaved rounds,
and checks that the gradients agree.

    python bench/attention_blocks.py --ctx 128 --blocks 1,2,4 --json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ebt.models.attention import causal_prefix_mask, query_blocked_attention  # noqa: E402
from ebt.ops.prediction_attention import fused_prediction_attention  # noqa: E402


def step(blocks: int, B: int, H: int, L: int, hd: int) -> list[torch.Tensor]:
    torch.manual_seed(1)
    q, k_self, v_self = (torch.randn(B, H, L, hd, requires_grad=True) for _ in range(3))
    k_leaf, v_leaf = (torch.randn(B, H, L, hd, requires_grad=True) for _ in range(2))
    k_obs, v_obs = k_leaf * 1, v_leaf * 1          # non-leaves, as in the model
    allowed = causal_prefix_mask(L, L, 0, q.device)
    o = query_blocked_attention(fused_prediction_attention, blocks, q, k_obs, v_obs, k_self, v_self, allowed)
    (gq,) = torch.autograd.grad((o * torch.randn_like(o)).sum(), q, create_graph=True)
    ((gq * gq).sum() + (o * o).sum()).backward()
    return [q.grad, k_leaf.grad, v_leaf.grad, k_self.grad]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--blocks", default="1,2,4")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    shape = (args.batch, args.heads, args.ctx, args.head_dim)
    blocks = [int(b) for b in args.blocks.split(",")]
    if 1 not in blocks or min(blocks) < 1:
        p.error("--blocks must be positive and include 1 (the reference)")
    ref = step(1, *shape)
    err = {b: max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(step(b, *shape), ref))
           for b in blocks}
    times: dict[int, list[float]] = {b: [] for b in blocks}
    for rnd in range(args.rounds + 1):            # round 0 is warm-up
        for b in blocks:
            t0 = time.perf_counter()
            step(b, *shape)
            if rnd:
                times[b].append(time.perf_counter() - t0)
    ratio = {b: round(statistics.median(t / t1 for t, t1 in zip(times[b], times[1])), 3) for b in blocks}
    res = {"shape": shape, "ms": {b: round(statistics.median(t) * 1e3, 1) for b, t in times.items()},
           "time_vs_one_block": ratio, "max_rel_grad_diff": err}
    print(json.dumps(res) if args.json else res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
