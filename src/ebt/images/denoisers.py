"""Objectives on top of the networks: the EBT denoiser (energy + descent + SmoothL1) and the DiT denoiser
(noise prediction + DDIM). Both share the trainer interface of the text models:
    forward(clean (B, C, H, W) in [-1, 1]) -> ImageOutput(loss, metrics)     noise is drawn inside
    param_groups(optim_cfg)                 -> AdamW parameter groups
and a `denoise(x_t, ...)` method used by evaluation and the CLI.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt import noise
from ebt.config import OptimConfig
from ebt.errors import UserError
from ebt.images.config import ImageRunConfig
from ebt.images.diffusion import DDPMSchedule, SampleOutput
from ebt.images.models import DiTNet, EnergyNet
from ebt.thinking import Thinker, Thought
from ebt.training.checkpoint import load_checked
from ebt.training.optim import adamw_groups
from ebt.training.pretrained import HubMixin


@dataclass
class ImageOutput:
    loss: Tensor
    metrics: dict = field(default_factory=dict)


@dataclass
class Denoised:
    """What `denoise` returns for either model."""
    sample: Tensor
    """Final denoised images (B, C, H, W) in [-1, 1]."""
    steps: list
    """Intermediate results whose cost is known: EBT after each step, DiT after each recursion."""
    forwards: list
    """Cumulative network forward passes for each entry of `steps`."""
    backwards: list
    """Cumulative input-gradient backward passes (EBT only; 0 for the DiT)."""


class EBTDenoiser(HubMixin, nn.Module):
    """Bidirectional EBT: the prediction starts at the noisy image and descends the energy, x <- x - alpha dE/dx.

    The thinker sees each image as one candidate of shape (1, C*H*W) so that alpha randomisation, acceptance and
    convergence checks act per image, matching the reference's per-sample alpha of shape (B, 1, 1, 1).
    """

    kind = "ebt"

    def __init__(self, cfg: ImageRunConfig):
        super().__init__()
        self.cfg = cfg
        self.energy = EnergyNet(cfg.model)
        self.thinker = Thinker(cfg.think, softmax=False)
        self.schedule = DDPMSchedule(cfg.diffusion)

    def _energy_fn(self, shape: torch.Size):
        def fn(z: Tensor, landscape: int) -> Tensor:  # no step conditioning: the landscape index is unused
            return self.energy(z.view(shape))[:, None]  # (B, 1, C*H*W) -> (B, 1)
        return fn

    def forward(self, x0: Tensor, training: Optional[bool] = None) -> ImageOutput:
        training = self.training if training is None else training
        b = x0.shape[0]
        t = self.schedule.train_timesteps(b, fixed=not self.cfg.diffusion.random_level, device=x0.device)
        x_t = self.schedule.q_sample(x0, t, noise.randn_like(x0))                 # (B, C, H, W)
        with torch.set_grad_enabled(training or torch.is_grad_enabled()):
            thought = self.thinker.train_descent(self._energy_fn(x0.shape), x_t.flatten(1)[:, None], training)
            preds = [z.view_as(x0) for z in thought.candidates]
            losses = [F.smooth_l1_loss(p, x0, beta=1.0) for p in preds]
            loss = losses[-1] if self.cfg.think.truncate else torch.stack(losses).mean()
        # Energies are recorded before each update, so a one-step descent reports a gap of 0. The metric keys stay
        # the same every step: the trainer all-reduces them across ranks by key.
        gap = (thought.energies[0].mean() - thought.energies[-1].mean()).item()
        metrics = {"initial_loss": F.smooth_l1_loss(x_t, x0).item(), "final_loss": losses[-1].item(),
                   "energy_gap": gap, "alpha": self.thinker.step_size().item(), "steps": len(preds)}
        return ImageOutput(loss, metrics)

    def denoise(self, x_t: Tensor, steps: Optional[int] = None) -> Denoised:
        """`steps` gradient steps (default: the trained evaluation schedule) from the noisy image; no
        second-order graph."""
        steps = steps or len(self.thinker.schedule(training=False))
        n = self.cfg.think.landscapes
        schedule = [min(i, n - 1) for i in range(steps)]
        thought: Thought = self.thinker.descend(self._energy_fn(x_t.shape), x_t.flatten(1)[:, None], schedule)
        preds = [z.detach().view_as(x_t) for z in thought.candidates]
        counts = list(range(1, len(preds) + 1))   # each step: one energy forward and one backward to the input
        return Denoised(preds[-1], preds, counts, counts)

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        return adamw_groups(self, optim, self.thinker.alpha, self.cfg.think.alpha_lr_mult)

    def run(self, x_t: Tensor, level: float, setting: dict) -> Denoised:
        """One inference setting of an evaluation ({"steps": N}; default: as trained) on noisy images."""
        return self.denoise(x_t, steps=setting.get("steps"))

    @staticmethod
    def curve_point(j: int) -> dict:
        """What the j-th intermediate result of `denoise` is: after j+1 gradient steps."""
        return {"steps": j + 1}


class DiTDenoiser(HubMixin, nn.Module):
    """DiT baseline: predicts the noise of x_t (and, optionally, the variance); denoises with DDIM."""

    kind = "dit"

    def __init__(self, cfg: ImageRunConfig):
        super().__init__()
        self.cfg = cfg
        self.net = DiTNet(cfg.model)
        self.schedule = DDPMSchedule(cfg.diffusion)

    def eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.net(x_t, t)[:, :x_t.shape[1]]                                 # (B, C, H, W)

    def forward(self, x0: Tensor, training: Optional[bool] = None) -> ImageOutput:
        t = self.schedule.train_timesteps(x0.shape[0], fixed=False, device=x0.device)  # t ~ U[0, 100)
        eps = noise.randn_like(x0)  # per sample inside ebt.noise.per_sample (world-size-invariant training)
        x_t = self.schedule.q_sample(x0, t, eps)
        loss, metrics = self.schedule.dit_loss(self.net(x_t, t), x0, x_t, t, eps)
        return ImageOutput(loss, metrics)

    def run(self, x_t: Tensor, level: float, setting: dict) -> Denoised:
        """One inference setting of an evaluation ({"ddim_steps", "recurse"}; default: every timestep) on noisy
        images at noise `level`."""
        return self.denoise(x_t, self.schedule.t_for_level(level), steps=setting.get("ddim_steps"),
                            recurse=setting.get("recurse", 0))

    @staticmethod
    def curve_point(j: int) -> dict:
        """What the j-th intermediate result of `denoise` is: the chain re-run j more times on its own output."""
        return {"recurse": j}

    @torch.no_grad()
    def denoise(self, x_t: Tensor, t_start: int, steps: Optional[int] = None, recurse: int = 0) -> Denoised:
        out: SampleOutput = self.schedule.ddim(self.eps, x_t, t_start, steps, recurse)
        per_chain = out.nfe // len(out.chains)
        return Denoised(out.sample, out.chains, [per_chain * (i + 1) for i in range(len(out.chains))],
                        [0] * len(out.chains))

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        return adamw_groups(self, optim)


def build_image_model(cfg: ImageRunConfig) -> nn.Module:
    if not (cfg.model.image_size and cfg.model.channels):
        raise UserError("model.image_size and model.channels are unresolved (0): they are set from the data "
                        "when training starts")
    return EBTDenoiser(cfg) if cfg.model.kind == "ebt" else DiTDenoiser(cfg)


def load_image_model(path: str | Path, kind: Optional[str] = None) -> tuple[nn.Module, ImageRunConfig]:
    """Rebuild an image denoiser from a checkpoint folder (or run folder); `kind` refuses the other model type."""
    model, cfg = load_checked(
        path, "denoise", ImageRunConfig, build_image_model, kind,
        "holds a {task} model, not an image denoiser: pass a checkpoint trained with --preset denoise-tiny or dit-tiny",
        "holds a {found} denoiser, but {kind} is expected here")
    return model.eval(), cfg
