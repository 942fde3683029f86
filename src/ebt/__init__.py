"""Energy-Based Transformers: models that predict by gradient descent on a learned energy (arXiv 2507.02092).

The public names below are imported on first use, so that `import ebt` (and the `ebt` command, see ebt/_entry.py)
can set process-level options that torch reads once, at its first allocation, before torch is loaded.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "ebt.checkpoint", "save_checkpoint": "ebt.checkpoint",
    "DataConfig": "ebt.config", "ModelConfig": "ebt.config", "OptimConfig": "ebt.config", "RunConfig": "ebt.config",
    "ThinkConfig": "ebt.config", "TrainConfig": "ebt.config", "apply_overrides": "ebt.config",
    "load_reference": "ebt.convert", "ByteTokenizer": "ebt.data.text", "UserError": "ebt.errors",
    "SampleOptions": "ebt.generation", "generate": "ebt.generation", "ThinkOptions": "ebt.inference",
    "think": "ebt.inference", "TextEBT": "ebt.lm", "TextTransformer": "ebt.lm", "build_lm": "ebt.lm",
    "PRESETS": "ebt.presets", "get_preset": "ebt.presets", "Thinker": "ebt.thinking", "Thought": "ebt.thinking",
}
_RENAMED = {"fit": ("ebt.train", "train")}
__all__ = sorted([*_EXPORTS, *_RENAMED])


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name], name
    elif name in _RENAMED:
        module, attr = _RENAMED[name]
    else:
        raise AttributeError(f"module 'ebt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value   # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
