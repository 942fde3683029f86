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


def test_tasks_are_found_by_the_config_task_field():
    import ebt.tasks  # noqa: F401  (registers the built-in tasks)
    from ebt.config import RunConfig
    from ebt.errors import UserError
    from ebt.images.config import ImageRunConfig
    from ebt.training.registry import task_spec

    assert task_spec(RunConfig().task).config_class is RunConfig
    assert task_spec(ImageRunConfig().task).config_class is ImageRunConfig
    assert task_spec("video").config_class.__name__ == "VideoRunConfig"
    with pytest.raises(UserError, match="task 'audio' is not registered"):
        task_spec("audio")


def test_old_checkpoint_config_loads_and_the_wrong_task_is_refused(tmp_path):
    """A config.json written before configs had `task` (and with `think.steps`) is a text run; an image checkpoint
    handed to a text loader gets one line naming the right command."""
    import json

    import ebt.tasks  # noqa: F401
    from ebt.config import RunConfig, to_dict
    from ebt.errors import UserError
    from ebt.images.config import ImageRunConfig
    from ebt.text.task import load_model
    from ebt.training.checkpoint import read_config

    old = to_dict(RunConfig())
    del old["task"]
    old["think"]["steps"] = old["think"].pop("landscapes")
    (tmp_path / "config.json").write_text(json.dumps({"config": old, "meta": {}}))
    with pytest.warns(FutureWarning):
        cfg, _ = read_config(tmp_path)
    assert cfg == RunConfig()
    (tmp_path / "config.json").write_text(json.dumps({"config": to_dict(ImageRunConfig()), "meta": {}}))
    with pytest.raises(UserError, match="holds a denoise model"):
        load_model(tmp_path)


def test_trainer_state_round_trips_without_pickle(tmp_path):
    """Tensors go to safetensors, the rest to JSON; tuples (Python's RNG state) come back as tuples."""
    import random

    from ebt.training.state import STATE_JSON, STATE_TENSORS, read_state, write_state

    state = {"step": 3, "samples": 24, "scheduler": {"base_lrs": [0.1, 0.2], "lr_lambdas": [None]},
             "optimizer": {"state": {"w": {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 2)}},
                           "param_groups": [{"lr": 0.1, "params": ["w"], "betas": (0.9, 0.999)}]},
             "torch_rng": [torch.get_rng_state()], "py_rng": [random.getstate()], "ids": {0: "a"}}
    write_state(tmp_path, state)
    assert {p.name for p in tmp_path.iterdir()} == {STATE_JSON, STATE_TENSORS}
    back = read_state(tmp_path)
    assert back["py_rng"][0] == random.getstate() and back["ids"] == {0: "a"}
    assert torch.equal(back["optimizer"]["state"]["w"]["exp_avg"], state["optimizer"]["state"]["w"]["exp_avg"])
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    random.setstate(back["py_rng"][0])   # usable as is


def test_trainer_state_is_never_unpickled(tmp_path):
    """A trainer.pt of an older version is read with weights_only=True: a planted pickle that would run code is
    refused with one line, and nothing runs."""
    import pickle

    from ebt.errors import UserError
    from ebt.training.checkpoint import load_trainer_state
    from ebt.training.state import LEGACY_STATE

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / LEGACY_STATE).write_bytes(pickle.dumps({"step": Payload()}))
    with pytest.raises(UserError, match="without running code"):
        load_trainer_state(tmp_path)
    assert not (tmp_path / "pwned").exists()
    torch.save({"step": 3, "optimizer": {}, "scheduler": {}, "torch_rng": [torch.get_rng_state()],
                "py_rng": [(3, (1, 2), None)]}, tmp_path / LEGACY_STATE)
    assert load_trainer_state(tmp_path)["step"] == 3      # an older run whose state is plain data still resumes
