"""Energy-Based Transformers: models that predict by gradient descent on a learned energy (arXiv 2507.02092).

The public names below are imported on first use, so that `import ebt` (and the `ebt` command, see ebt/_entry.py)
can set process-level options that torch reads once, at its first allocation, before torch is loaded.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DataConfig": "ebt.config", "ModelConfig": "ebt.config", "OptimConfig": "ebt.config", "RunConfig": "ebt.config",
    "ThinkConfig": "ebt.config", "TrainConfig": "ebt.config", "apply_overrides": "ebt.config",
    "UserError": "ebt.errors", "PRESETS": "ebt.presets", "get_preset": "ebt.presets", "fit": "ebt.tasks",
    "ByteTokenizer": "ebt.text.tokenizers", "load_tokenizer": "ebt.text.tokenizers",
    "prepare_shards": "ebt.text.shards", "open_shards": "ebt.text.shards", "SampleOptions": "ebt.text.generation", "generate": "ebt.text.generation",
    "think": "ebt.text.inference", "TextEBT": "ebt.text.models", "TextTransformer": "ebt.text.models",
    "build_lm": "ebt.text.models", "load_model": "ebt.text.task", "load_tokenizer_of": "ebt.text.task",
    "load_reference": "ebt.text.convert",
    "ThinkOptions": "ebt.thinking", "Thinker": "ebt.thinking", "Thought": "ebt.thinking",
    "save_checkpoint": "ebt.training.checkpoint",
    "Item": "ebt.text.downstream.items", "read_items": "ebt.text.downstream.items",
    "load_tasks": "ebt.text.downstream.tasks", "Scoring": "ebt.text.downstream.scoring",
    "score_task": "ebt.text.downstream.scoring",
    "VideoRunConfig": "ebt.video.config", "load_video_model": "ebt.video.task", "rollout": "ebt.video.models",
    "load_clips": "ebt.video.data", "load_videos": "ebt.video.data", "evaluate_video": "ebt.video.evaluate",
    "VideoEvalSettings": "ebt.video.evaluate", "thinking_diagnostics": "ebt.text.diagnostics",
    "inference_path": "ebt.models.explicit",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ebt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value   # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
