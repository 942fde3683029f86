"""Run by tests/e2e/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU): the parameter gradients of one
global batch under DDP and under FSDP2, each process taking its share of the batch. Rank 0 saves the whole
gradients (FSDP2's gathered from the shards) to the file given as the first argument.
"""
from __future__ import annotations

import sys

import torch

from ebt import noise
from ebt.config import DataConfig, DistConfig, ModelConfig, RunConfig, ThinkConfig
from ebt.text.models import build_lm
from ebt.training import distributed as dist
from ebt.training.sharding import rank_positions

SEED, GLOBAL_BATCH = 0, 4


def grad_config(strategy: str = "ddp", param_dtype: str = "fp32") -> RunConfig:
    """A tiny EBT whose descent uses every kind of training noise: random step sizes, Langevin noise and a random
    number of steps (all drawn per sample / per global batch by `ebt.noise`)."""
    return RunConfig(model=ModelConfig(dim=32, layers=2, heads=2, context=16),
                     think=ThinkConfig(landscapes=2, alpha=20.0, rand_alpha_scale=2.0, langevin_std=0.5, rand_steps=1),
                     data=DataConfig(max_chars=4000), dist=DistConfig(strategy=strategy, param_dtype=param_dtype))


def grad_tokens() -> torch.Tensor:
    """The global batch: GLOBAL_BATCH windows of context+1 byte tokens (no padding byte)."""
    return torch.randint(1, 256, (GLOBAL_BATCH, 17), generator=torch.Generator().manual_seed(SEED))


def full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out[name.removeprefix("module.")] = g.detach().float().clone()
    return out


def step_grads(strategy: str, param_dtype: str = "fp32") -> dict[str, torch.Tensor]:
    cfg = grad_config(strategy, param_dtype)
    torch.manual_seed(SEED)
    model = build_lm(cfg)
    wrapped = dist.wrap(model, cfg)
    b = GLOBAL_BATCH // dist.world()
    tokens = grad_tokens()[dist.rank() * b:(dist.rank() + 1) * b]
    positions = rank_positions(0, b, dist.rank()).tolist()
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if param_dtype == "bf16" else torch.autocast("cpu",
                                                                                                        enabled=False)
    with dist.gathered(wrapped), noise.per_sample(SEED, positions, key=0), precision:
        wrapped(tokens).loss.backward()
    return full_grads(model)


def main() -> None:
    dist.setup("gloo", "cpu")
    torch.set_num_threads(1)
    results = {s: step_grads(s) for s in ("ddp", "fsdp2")}
    bf16 = step_grads("fsdp2", "bf16")  # mixed precision: runs and gives finite gradients (not exact by design)
    results["fsdp2_bf16_finite"] = all(bool(torch.isfinite(g).all()) for g in bf16.values())
    if dist.is_main():
        torch.save(results, sys.argv[1])
    dist.teardown()


if __name__ == "__main__":
    main()
