"""Run metrics: `metrics.jsonl` always, TensorBoard event files when tensorboard is installed (rank 0 only)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


class MetricsLog:
    """metrics.jsonl always; TensorBoard event files when tensorboard is installed. Rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool, purge_step: Optional[int] = None):
        """purge_step: a resumed run's checkpoint step; TensorBoard drops the events logged after it."""
        self.enabled = enabled
        self.file = open(out_dir / "metrics.jsonl", "a") if enabled else None
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=purge_step)
            except ImportError:
                pass

    def log(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
