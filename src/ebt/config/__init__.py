"""Typed configuration: one dataclass per section (`sections`), and its dict / YAML / override plumbing (`parsing`).

Presets are functions in `ebt.presets`; users change them with YAML files or dotted overrides (`--optim.lr=3e-3`).
"""
from ebt.config.parsing import apply_overrides, from_dict, load_yaml, save_yaml, to_dict
from ebt.config.sections import (CHECKPOINTING, CONDITIONINGS, DIST_STRATEGIES, DataConfig, DistConfig, ModelConfig,
                                 OptimConfig, RunConfig, ThinkConfig, TrainConfig, check, check_at_least_one)

__all__ = ["CHECKPOINTING", "CONDITIONINGS", "DIST_STRATEGIES", "DataConfig", "DistConfig", "ModelConfig",
           "OptimConfig", "RunConfig", "ThinkConfig", "TrainConfig", "apply_overrides", "check", "check_at_least_one",
           "from_dict", "load_yaml", "save_yaml", "to_dict"]
