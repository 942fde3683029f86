"""Pictures of generated video: a GIF (truth beside prediction, frame by frame) and a PNG strip with three rows,
context | truth | prediction, each predicted frame titled with its final energy (the EBT's uncertainty)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ebt.media import save_gif, to_uint8


def side_by_side(context: Tensor, truth: Optional[Tensor], pred: Tensor) -> Tensor:
    """Frames (C + H, C, h, 2w + 2) in [0, 1]: the true video on the left (context then truth, or the prediction
    where no truth is known) and the generated one on the right (context then prediction), a white bar between."""
    left = torch.cat([context, truth if truth is not None else pred])
    right = torch.cat([context, pred])
    bar = torch.ones(*left.shape[:-1], 2)
    return torch.cat([left, bar, right], dim=-1)


def save_rollout(context: Tensor, truth: Optional[Tensor], pred: Tensor, energies: Optional[list[float]],
                 gif: Path, strip: Path, fps: float = 4.0) -> None:
    """Write the GIF and the PNG strip of one rollout; frames (N, C, h, w) in [0, 1]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    save_gif(side_by_side(context, truth, pred), gif, fps=fps, scale=4)
    rows = [("context", context), ("truth", truth), ("prediction", pred)]
    rows = [(name, frames) for name, frames in rows if frames is not None]
    cols = max(len(f) for _, f in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.1 * cols, 1.3 * len(rows)), squeeze=False)
    for r, (name, frames) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(frames):
                continue
            ax.imshow(to_uint8(frames[c]), cmap="gray" if frames.shape[1] == 1 else None, vmin=0, vmax=255)
            if name == "prediction" and energies is not None:
                ax.set_title(f"E={energies[c]:.3g}", fontsize=7)
            elif c == 0:
                ax.set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    strip.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(strip, dpi=110)
    plt.close(fig)
