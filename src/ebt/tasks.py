"""The built-in tasks. Importing this module registers each of them with the trainer (`ebt.training.registry`):
`text` (language modelling, `ebt.text.task`), `denoise` (images, `ebt.images.task`), `video` and `frame-ae`
(`ebt.video.task`). A new modality adds its
task module here; the trainer itself never imports a modality.
"""
from __future__ import annotations

from typing import Any

import ebt.images.task  # noqa: F401  (registers "denoise")
import ebt.text.task  # noqa: F401  (registers "text")
import ebt.video.task  # noqa: F401  (registers "video" and "frame-ae")
from ebt.training.loop import TrainResult, train


def fit(cfg: Any, resume: bool = False, overwrite: bool = False, stop_at=None) -> TrainResult:
    """Train any built-in run config (text `RunConfig`, image `ImageRunConfig`, video `VideoRunConfig` or
    `FrameAERunConfig`): `ebt.fit`."""
    return train(cfg, resume=resume, overwrite=overwrite, stop_at=stop_at)
