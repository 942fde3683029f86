"""The training package without a training run: the data-stream layout across processes, world-size-invariant
noise, distributed config validation."""
import pytest
import torch

from ebt import noise


def test_dist_config_validation():
    from ebt.config import DistConfig, RunConfig, apply_overrides
    from ebt.errors import UserError

    cfg = apply_overrides(RunConfig(), {"dist.strategy": "fsdp2", "dist.param_dtype": "bf16"})
    assert cfg.dist.param_dtype == "bf16"
    for bad in ({"strategy": "zero3"}, {"param_dtype": "bf16"}, {"strategy": "fsdp2", "reduce_dtype": "fp8"},
                {"backend": "mpi"}):
        with pytest.raises(UserError, match="dist."):
            DistConfig(**bad)


def test_sharded_batches_are_slices_of_the_global_batch():
    """W processes with batch b take the slices of one process's batch W*b, across epoch boundaries, and resume from
    a sample count on another world size."""
    from ebt.training.sharding import sharded_indices

    one = sharded_indices(10, 4, seed=3)
    two = [sharded_indices(10, 2, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(7):  # 28 samples: almost three epochs of 10
        assert torch.equal(next(one), torch.cat([next(two[0]), next(two[1])]))
    resumed = sharded_indices(10, 4, seed=3, start=28)
    assert torch.equal(next(resumed), torch.cat([next(two[0]), next(two[1])]))


def test_noise_is_per_sample():
    """Inside noise.per_sample a row's draws depend on its stream position and the draw index only."""
    with noise.per_sample(7, [0, 1, 2, 3], key=0):
        full = noise.randn((4, 3, 5)), noise.rand((4, 3, 1)), noise.batch_rng().random()
    halves = []
    for rows in ([0, 1], [2, 3]):
        with noise.per_sample(7, rows, key=0):
            halves.append((noise.randn((2, 3, 5)), noise.rand((2, 3, 1)), noise.batch_rng().random()))
    assert torch.equal(full[0], torch.cat([h[0] for h in halves]))
    assert torch.equal(full[1], torch.cat([h[1] for h in halves]))
    assert full[2] == halves[0][2] == halves[1][2]
    assert not torch.equal(full[0][0], full[0][1])
