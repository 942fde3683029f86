import os
from pathlib import Path

import pytest
import torch

from ebt.config import DataConfig, ModelConfig, OptimConfig, RunConfig, ThinkConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# parity fixtures written by the reference implementation (tests/fixtures/reference/README.md); the variable points
# the parity tests at another folder of them
FIXTURES = Path(os.environ.get("EBT_PARITY_FIXTURES", ROOT / "tests" / "fixtures" / "reference"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_cfg(tmp_path) -> RunConfig:
    """A model small enough for unit tests (dim 32, 2 layers), on 4 kB of the embedded corpus."""
    return RunConfig(
        model=ModelConfig(dim=32, layers=2, heads=2, context=16, conditioning="time_embed"),
        think=ThinkConfig(landscapes=2, alpha=20.0, alpha_lr_mult=60.0),
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
        train=TrainConfig(steps=4, batch_size=4, eval_every=2, eval_batches=1, log_every=1,
                          out_dir=str(tmp_path / "run"), progress=False),
        data=DataConfig(max_chars=20000, val_fraction=0.1),
    )
