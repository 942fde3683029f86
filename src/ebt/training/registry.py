"""Tasks: what binds a run's config to its data and model, and the registry that finds the task of a config.

The trainer trains whatever `Task` it is given and never imports a modality: each modality (`ebt.text`,
`ebt.images`) registers its task under the name its config carries in its `task` field, e.g.
    register_task("text", RunConfig, TextTask)
`ebt.tasks` imports every built-in modality, so `ebt.fit` and the `ebt` command know all of them.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import Tensor, nn

from ebt.errors import UserError


class Task(Protocol):
    """What the training loop needs from a modality."""

    cfg: Any

    def describe(self) -> str:
        """A short name for progress bars, e.g. `ebt` or `dit-denoise`."""

    def build_model(self) -> nn.Module:
        """A fresh model whose forward(batch, training=...) returns an output with `.loss` and `.metrics`, and
        whose param_groups(optim_cfg) gives the AdamW groups."""

    def train_batches(self, batch_size: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tensor]:
        """Endless training batches of process `rank` of `world`, from stream position `start` (the samples all
        processes consumed before: exact resume on any world size; `ebt.training.sharding`)."""

    def evaluate(self, model: nn.Module, device, max_batches: int, batch_size: int,
                 precision: str = "fp32") -> dict:
        """Held-out metrics (floats), the same on every rank."""

    def checkpoint_files(self) -> dict[str, bytes]:
        """Files (name -> contents) every checkpoint of the run carries besides weights and config, e.g. a text
        run's tokenizer; a resumed run must bring the same ones."""


class InMemoryTask:
    """Shared by tasks whose training data sit in memory as `self.train_set`, a set with
    `.batches(batch_size, seed, start, rank, world)` (images, video): their batches, and no extra checkpoint files."""

    cfg: Any
    train_set: Any

    def train_batches(self, batch_size: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tensor]:
        return self.train_set.batches(batch_size, self.cfg.train.seed, start, rank, world)

    def checkpoint_files(self) -> dict[str, bytes]:
        return {}


@contextmanager
def evaluating(model: nn.Module, device, seed: int = 1234) -> Iterator[None]:
    """Evaluation mode without gradients, the evaluation's noise drawn from `seed` (the same numbers on every rank
    and at every evaluation) and the random state restored afterwards, so validating does not change what training
    draws next."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    """The value of the config's `task` field."""
    config_class: type
    """The run config dataclass (checkpoints of this task are rebuilt as it)."""
    make: Callable[[Any], Task]
    """config -> Task."""


_TASKS: dict[str, TaskSpec] = {}


def register_task(name: str, config_class: type, make: Callable[[Any], Task]) -> None:
    """Make configs with `task == name` trainable and their checkpoints loadable (called once per modality)."""
    _TASKS[name] = TaskSpec(name, config_class, make)


def task_spec(name: str) -> TaskSpec:
    if name not in _TASKS:
        known = ", ".join(sorted(_TASKS)) or "none"
        raise UserError(f"task {name!r} is not registered (known: {known}): import the module that registers it, "
                        "e.g. `import ebt.tasks` for every built-in task")
    return _TASKS[name]


def task_for(cfg: Any) -> Task:
    """The task that trains `cfg`, chosen by its `task` field."""
    return task_spec(cfg.task).make(cfg)
