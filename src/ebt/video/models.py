"""Objectives and predictors of next-frame video in a frozen encoder's latent space, sharing one interface:
    forward(clips (B, F, C, H, W) in [-1, 1]) -> VideoOutput(loss, metrics)       (training; SmoothL1 on latents)
    start_cache(window) / extend_cache(cache, latents) / next_frame(window, cache, options, generator)
and `rollout` (below) generates frames autoregressively through that interface, extending a KV cache by one frame
at a time (the reference re-runs the whole sequence for every frame).

* `VideoEBT`: candidates start from noise (or the last frame plus noise) and descend the energy (`Thinker` with
  softmax=False); thinking options: more steps, best-of-N by final energy.
* `VideoTransformer`: the Transformer++ regressor.
* `CopyLast`: repeats the last context frame (the baseline every model must beat).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt import noise
from ebt.config import OptimConfig
from ebt.errors import Note, UserError
from ebt.models.ar_ebt import ContextEnergy
from ebt.models.backbone import Observed
from ebt.models.frames import FrameEnergyModel, FrameTransformer
from ebt.models.layers import frozen_weights
from ebt.thinking import ThinkOptions, Thinker, select_samples
from ebt.training.devices import check_fits
from ebt.training.optim import adamw_groups
from ebt.training.pretrained import HubMixin
from ebt.video.config import VideoRunConfig
from ebt.video.encoders import FrameEncoder


@dataclass
class VideoOutput:
    loss: Tensor
    metrics: dict = field(default_factory=dict)


@dataclass
class FrameStep:
    latent: Tensor
    """The predicted latent of the next frame (B, F)."""
    energy: Optional[Tensor]
    """Its final energy (B,) (EBT; the uncertainty); None for models without one."""
    nfe: int
    """Network forward passes spent on it (an EBT's descent step also costs one backward to the candidates)."""


def latent_loss(pred: Tensor, target: Tensor) -> Tensor:
    """SmoothL1 (beta 1) on latents, the reference's video loss."""
    return F.smooth_l1_loss(pred, target, beta=1.0)


class _VideoModel(HubMixin, nn.Module):
    """What both learnt models share: the frozen encoder, encoding clips, and the optimizer groups."""

    can_think = False

    def __init__(self, cfg: VideoRunConfig, encoder: FrameEncoder):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder.freeze()

    @property
    def window(self) -> int:
        """Context frames each prediction sees at most (the trained context)."""
        return self.cfg.model.context

    def encode_clips(self, clips: Tensor) -> Tensor:
        """(B, F, C, H, W) -> latents (B, F, latent_dim)."""
        return self.encoder.encode(clips.flatten(0, 1)).unflatten(0, clips.shape[:2])

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        return adamw_groups(self, optim)

    @staticmethod
    def check_options(options: Optional[ThinkOptions]) -> None:
        if options is not None and options != ThinkOptions():
            raise UserError("thinking options (--steps, --samples, ...) apply to EBT checkpoints only")


class VideoEBT(_VideoModel):
    kind = "ebt"
    can_think = True

    def __init__(self, cfg: VideoRunConfig, encoder: FrameEncoder):
        super().__init__(cfg, encoder)
        self.energy = FrameEnergyModel(cfg.model, encoder.latent_dim, cfg.think.landscapes)
        self.thinker = Thinker(cfg.think, softmax=False)
        if encoder.latent_dim > cfg.model.dim and cfg.think.init_std > 0:
            warnings.warn(Note(f"frames have {encoder.latent_dim} latent values but model.dim={cfg.model.dim}: the "
                               "energy's gradient moves candidates only within its input projection's row space, so "
                               "the starting noise outside it stays (use model.dim >= the latent size, a smaller "
                               "frame or encoder, or think.init_std=0)"))

    def initial_candidates(self, last: Tensor, length: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """z0 (B, L, F) for L positions: N(0, init_std^2), plus the latest context frame of each position (B, L, F)
        with video.start=last. Without a generator the draws are ebt.noise's (world-size-invariant training)."""
        shape = (last.shape[0], length, last.shape[-1])
        z = (noise.randn(shape, last.device, last.dtype) if generator is None
             else torch.randn(shape, device=last.device, dtype=last.dtype, generator=generator)) * self.cfg.think.init_std
        return z + last if self.cfg.video.start == "last" else z

    def forward(self, clips: Tensor, training: Optional[bool] = None) -> VideoOutput:
        training = self.training if training is None else training
        latents = self.encode_clips(clips)
        x, y = latents[:, :-1], latents[:, 1:]                                       # (B, L, F) each
        z0 = self.initial_candidates(x, x.shape[1])
        with torch.set_grad_enabled(training or torch.is_grad_enabled()):
            thought = self.thinker.train_descent(ContextEnergy(self.energy, x), z0, training)
            losses = [latent_loss(z, y) for z in thought.candidates]
            loss = losses[-1] if self.cfg.think.truncate else torch.stack(losses).mean()
        gap = (thought.energies[0].mean() - thought.energies[-1].mean()).item()
        metrics = {"initial_loss": latent_loss(z0, y).item(), "final_loss": losses[-1].item(),
                   "final_mse": F.mse_loss(thought.final.detach(), y).item(), "copy_last_loss": latent_loss(x, y).item(),
                   "energy_gap": gap, "alpha": self.thinker.step_size().item(), "steps": len(losses)}
        return VideoOutput(loss, metrics)

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        return adamw_groups(self, optim, self.thinker.alpha, self.cfg.think.alpha_lr_mult)

    @staticmethod
    def check_options(options: Optional[ThinkOptions]) -> None:
        """Every thinking option but the text-only ones applies to an EBT."""
        if options is not None and (options.init_scale != 1.0 or options.entropy_weight or options.alpha_spread != 1):
            raise UserError("--init-scale, --entropy-weight and --alpha-spread apply to text EBTs (candidate logits), "
                            "not to video")

    # ---- generation ------------------------------------------------------------------------------------------
    def _cache_keys(self) -> list[int]:
        return list(range(self.energy.num_landscapes)) if self.energy.context_depends_on_step else [0]

    @torch.no_grad()
    def start_cache(self, window: Tensor) -> dict[int, Observed]:
        """KV cache of context frames (B, S, F) per step index (one when the context does not see the step), with
        room for a whole window so that appending never copies it."""
        with frozen_weights():
            return {k: self.energy.observe(window, k).with_capacity(self.cfg.model.context + 1)
                    for k in self._cache_keys()}

    @torch.no_grad()
    def extend_cache(self, cache: dict, latents: Tensor) -> dict:
        with frozen_weights():
            return {k: self.energy.observe(latents, k, past=o) for k, o in cache.items()}

    @torch.no_grad()
    def next_frame(self, window: Tensor, cache: Optional[dict] = None, options: Optional[ThinkOptions] = None,
                   generator: Optional[torch.Generator] = None) -> FrameStep:
        """The latent after context frames `window` (B, S, F): only the last position's candidate descends, over
        the cached context when `cache` is given; options.samples > 1 keeps the lowest-energy candidate."""
        self.check_options(options)
        opts = options or ThinkOptions()
        b, s, n = window.shape[0], window.shape[1], opts.samples
        cfg = self.cfg.model   # the samples' copies of the KV cache (per step index) and their candidates
        check_fits(window.element_size() * b * n * (2 * cfg.layers * (s + 1) * cfg.dim * len(self._cache_keys())
                                                     + 4 * window.shape[-1]),
                   window.device, f"thinking with {n} samples per frame", "use fewer samples or a shorter context")
        fn = ContextEnergy(self.energy, window.repeat_interleave(n, 0), start=s - 1)
        for k in self._cache_keys():   # the context's keys/values: from the cache, or computed once here
            obs = cache[k] if cache is not None else self.energy.observe(window, k)
            fn.cache[k if self.energy.context_depends_on_step else None] = obs.repeat(n) if n > 1 else obs
        z0 = self.initial_candidates(window[:, -1:].repeat_interleave(n, 0), 1, generator)   # (B*N, 1, F)
        schedule = self.thinker.inference_schedule(opts.steps, opts.final_landscape_only)
        with frozen_weights():
            out = self.thinker.descend(fn, z0, schedule, opts)
            final = self.thinker.final_energy(fn, out.final, schedule[len(out.candidates) - 1])   # (B*N, 1)
        pick = select_samples(out.energies[0].view(b, n), final.view(b, n), opts.select)        # (B,)
        rows = torch.arange(b, device=window.device) * n + pick
        return FrameStep(out.final[rows, 0], final[rows, 0], (out.nfe + 1) * n)


class VideoTransformer(_VideoModel):
    kind = "transformer"

    def __init__(self, cfg: VideoRunConfig, encoder: FrameEncoder):
        super().__init__(cfg, encoder)
        self.net = FrameTransformer(cfg.model, encoder.latent_dim)

    def forward(self, clips: Tensor, training: Optional[bool] = None) -> VideoOutput:
        latents = self.encode_clips(clips)
        x, y = latents[:, :-1], latents[:, 1:]
        pred = self.net(x)
        loss = latent_loss(pred, y)
        return VideoOutput(loss, {"final_loss": loss.item(), "final_mse": F.mse_loss(pred.detach(), y).item(),
                                  "copy_last_loss": latent_loss(x, y).item()})

    @torch.no_grad()
    def start_cache(self, window: Tensor) -> Observed:
        return self.net.observe(window).with_capacity(self.cfg.model.context + 1)

    @torch.no_grad()
    def extend_cache(self, cache: Observed, latents: Tensor) -> Observed:
        return self.net.observe(latents, past=cache)

    @torch.no_grad()
    def next_frame(self, window: Tensor, cache: Optional[Observed] = None, options: Optional[ThinkOptions] = None,
                   generator: Optional[torch.Generator] = None) -> FrameStep:
        self.check_options(options)
        obs = cache if cache is not None else self.net.observe(window)
        return FrameStep(self.net.output(obs.hidden[:, -1]), None, 1)


class CopyLast:
    """The copy-last-frame baseline: predicts that nothing moves."""

    kind = "copy-last"
    can_think = False

    def __init__(self, window: int):
        self.window = window

    def start_cache(self, window: Tensor) -> None:
        return None

    def extend_cache(self, cache, latents: Tensor) -> None:
        return None

    def next_frame(self, window: Tensor, cache=None, options=None, generator=None) -> FrameStep:
        return FrameStep(window[:, -1], None, 0)


@dataclass
class Rollout:
    latents: Tensor
    """Generated latents (B, H, F)."""
    energies: Optional[Tensor]
    """Final energy of each generated frame (B, H); None for models without one."""
    nfe: int
    """Network forward passes per generated frame, summed over the horizon."""


@torch.no_grad()
def rollout(model, context: Tensor, horizon: int, options: Optional[ThinkOptions] = None,
            generator: Optional[torch.Generator] = None, use_cache: bool = True) -> Rollout:
    """Generate `horizon` frames after context latents (B, C, F), each conditioned on the latest `model.window`
    frames. use_cache: extend the context's KV cache by each new frame (rebuilt when the window slides); otherwise
    recompute the context for every frame."""
    window_len = model.window
    window, cache, latents, energies, nfe = context, None, [], [], 0
    for _ in range(horizon):
        window = window[:, -window_len:]
        if use_cache and cache is None:
            cache = model.start_cache(window)
        step = model.next_frame(window, cache if use_cache else None, options, generator)
        latents.append(step.latent)
        energies.append(step.energy)
        nfe += step.nfe
        window = torch.cat([window, step.latent[:, None]], dim=1)
        if use_cache and cache is not None and window.shape[1] <= window_len:
            cache = model.extend_cache(cache, step.latent[:, None])
        else:
            cache = None
    return Rollout(torch.stack(latents, 1), None if energies[0] is None else torch.stack(energies, 1), nfe)


VIDEO_MODELS = {"ebt": VideoEBT, "transformer": VideoTransformer}
