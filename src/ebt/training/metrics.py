"""Run metrics (rank 0 only): `metrics.jsonl` always, plus the loggers of `train.loggers`, each given the same keys
("train/loss", "val/ppl", ...):
    tensorboard   event files in RUN/tb (the default)
    wandb         Weights & Biases (`pip install 'energy-based-transformers[wandb]'`): online when a key is set
                  (WANDB_API_KEY or `wandb login`), else offline into RUN/wandb, to `wandb sync` later
"""
from __future__ import annotations

import json
import netrc
import os
import uuid
from pathlib import Path
from typing import Any, Optional

from ebt.config.sections import logger_names
from ebt.errors import UserError

class _TensorBoard:
    def __init__(self, out_dir: Path, purge_step: Optional[int], config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=purge_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def histograms(self, step: int, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self.writer.add_histogram(k, v, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, out_dir: Path, purge_step: Optional[int], config: dict):
        try:
            import wandb
        except ImportError:
            raise UserError("train.loggers has wandb, which is not installed: pip install "
                            "'energy-based-transformers[wandb]'") from None

        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_key() else "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "ebt"), name=out_dir.name, dir=str(out_dir),
                              config=config, mode=mode, resume="allow" if purge_step else None,
                              id=_wandb_id(out_dir))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def histograms(self, step: int, values: dict[str, Any]) -> None:
        import wandb

        self.run.log({k: wandb.Histogram(v) for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


def _wandb_id(out_dir: Path) -> str:
    """One W&B run id per run folder, kept in RUN/wandb/run_id, so a resumed run continues its W&B run."""
    path = out_dir / "wandb" / "run_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id)
    return run_id


def _wandb_key() -> bool:
    """Whether a W&B key is set (WANDB_API_KEY, or the ~/.netrc entry `wandb login` writes); no network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


SINKS = {"tensorboard": _TensorBoard, "wandb": _Wandb}


class MetricsLog:
    """metrics.jsonl always; the loggers named in `loggers` (see the module docstring). Rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool, purge_step: Optional[int] = None,
                 loggers: str = "tensorboard", config: Optional[dict[str, Any]] = None):
        """purge_step: a resumed run's checkpoint step; TensorBoard drops the events logged after it."""
        self.enabled = enabled
        self.file = open(out_dir / "metrics.jsonl", "a") if enabled else None
        self.sinks = [SINKS[n](out_dir, purge_step, config or {}) for n in logger_names(loggers)] if enabled else []

    def log(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.file.flush()
        scalars = {f"{split}/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))}
        for sink in self.sinks:
            sink.log(step, scalars)

    def histograms(self, step: int, split: str, tensors: dict[str, Any]) -> None:
        """Distributions (an EBT's energies at each thinking step) for the loggers that draw them; metrics.jsonl
        keeps scalars only."""
        if not self.enabled or not self.sinks:
            return
        values = {f"{split}/{k}": t.detach().float().flatten().cpu().numpy() for k, t in tensors.items()}
        for sink in self.sinks:
            sink.histograms(step, values)

    def close(self) -> None:
        if self.file:
            self.file.close()
        for sink in self.sinks:
            sink.close()
