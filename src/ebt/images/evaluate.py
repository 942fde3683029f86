"""Denoising metrics and the EBT-vs-DiT comparison (docs/reference.md §8), with NFE counted for both.

Metrics are on 0..255 pixels: the prediction is mapped from [-1, 1] to [0, 1], clamped, times 255.
* `mse`: mean squared pixel error over every pixel of the set;
* `psnr`: the reference's pooled PSNR, 10 log10(255^2 / MSE of a batch), averaged over batches;
* `psnr_image`: the mean of per-image PSNRs.
NFE: a DiT DDIM step is one forward pass; an EBT step is one forward pass plus one backward pass to the input,
both counted (`nfe` = forwards + input-gradient backwards).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from ebt.images.diffusion import DDPMSchedule


def pixel_mse(pred: Tensor, clean: Tensor) -> Tensor:
    """Per-image MSE on 0..255 of predictions and clean images in [-1, 1] -> (B,)."""
    p = ((pred.float() + 1) / 2).clamp(0, 1) * 255
    c = ((clean.float() + 1) / 2).clamp(0, 1) * 255
    return ((p - c) ** 2).flatten(1).mean(1)


def psnr(mse: float | Tensor) -> float | Tensor:
    if isinstance(mse, Tensor):
        return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-10))


@dataclass
class Meter:
    """Accumulates the three metrics batch by batch."""
    per_image: list = field(default_factory=list)
    batch_psnr: list = field(default_factory=list)

    def add(self, pred: Tensor, clean: Tensor) -> None:
        mse = pixel_mse(pred, clean)                                               # (B,)
        self.per_image.append(mse)
        self.batch_psnr.append(psnr(mse.mean().item()))

    def result(self) -> dict:
        mse = torch.cat(self.per_image)
        return {"psnr": sum(self.batch_psnr) / len(self.batch_psnr), "psnr_image": psnr(mse).mean().item(),
                "mse": mse.mean().item()}


def noisy_versions(clean: Tensor, schedule: DDPMSchedule, level: float, seed: int) -> Tensor:
    """x_t at the level's timestep with noise fixed by `seed`, so every model sees the same inputs."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=g).to(clean.device)
    t = torch.full((clean.shape[0],), schedule.t_for_level(level), dtype=torch.long, device=clean.device)
    return schedule.q_sample(clean, t, noise)


def evaluate_curve(model, clean: Tensor, level: float, setting: dict, batch_size: int = 32, seed: int = 0,
                   keep: int = 0) -> tuple[list[dict], Optional[Tensor]]:
    """Metrics at every intermediate point of one inference setting (EBT steps / DiT recursions).

    Returns one row per point (with its forward/backward counts) and the first `keep` final predictions."""
    meters, costs, kept = None, None, None
    x_all = noisy_versions(clean, model.schedule, level, seed)
    for i in range(0, clean.shape[0], batch_size):
        x0, x_t = clean[i:i + batch_size], x_all[i:i + batch_size]
        out = model.run(x_t, level, setting)
        if meters is None:
            meters = [Meter() for _ in out.steps]
            costs = list(zip(out.forwards, out.backwards))
        for m, pred in zip(meters, out.steps):
            m.add(pred, x0)
        if kept is None and keep:
            kept = out.sample[:keep].cpu()
    rows = []
    for j, (m, (fwd, bwd)) in enumerate(zip(meters, costs)):
        row = {"model": model.kind, "level": level, "t": model.schedule.t_for_level(level), **setting,
               **m.result(), "forwards": fwd, "backwards": bwd, "nfe": fwd + bwd, **model.curve_point(j)}
        rows.append(row)
    return rows, kept


def noisy_row(clean: Tensor, schedule: DDPMSchedule, level: float, batch_size: int, seed: int) -> dict:
    """The metrics of the noisy input itself (what denoising must beat)."""
    x_all, m = noisy_versions(clean, schedule, level, seed), Meter()
    for i in range(0, clean.shape[0], batch_size):
        m.add(x_all[i:i + batch_size], clean[i:i + batch_size])
    return {"model": "noisy", "level": level, "t": schedule.t_for_level(level), **m.result(),
            "forwards": 0, "backwards": 0, "nfe": 0}


@torch.no_grad()
def evaluate_at_level(model, clean: Tensor, level: float, batch_size: int, seed: int = 0) -> dict:
    """One number set for training-time validation: the model's default inference at `level`."""
    rows, _ = evaluate_curve(model, clean, level, {}, batch_size, seed)
    r = rows[-1]
    return {"psnr": r["psnr"], "psnr_image": r["psnr_image"], "mse": r["mse"], "nfe": r["nfe"]}
