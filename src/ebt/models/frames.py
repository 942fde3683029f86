"""Autoregressive models over continuous frame latents (video): the EBT's energy function and the Transformer++
regressor. Both take latents (B, S, F) of S frames, F values each, from a frozen frame encoder, and project them to
the model width with one Linear(F, D) (the reference's down-projection).

* `FrameEnergyModel`: E(context latents, candidate latents, step) -> (B, L). Context frames and candidates share the
  down-projection, as in the reference; the rest is the text EBT's two-stream transformer (`AREnergy`).
* `FrameTransformer`: the Transformer++ baseline: the same backbone, then Linear(D, D) and an up-projection
  Linear(D, F) that regresses the next frame's latent (the reference's Baseline_Transformer_VID).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ebt.config import ModelConfig
from ebt.models.ar_ebt import AREnergy
from ebt.models.backbone import Backbone, Observed, init_weights


class FrameEnergyModel(AREnergy):
    def __init__(self, cfg: ModelConfig, latent_dim: int, num_landscapes: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.frame_to_embed = nn.Linear(latent_dim, cfg.dim, bias=True)
        self._build(cfg, num_landscapes)

    def observe(self, latents: Tensor, step: int = 0, past: Optional[Observed] = None) -> Observed:
        """Observed stream of context frames (B, S, F), appended to `past` if given (KV cache)."""
        return self.observe_embedded(self.frame_to_embed(latents), step, past)

    def embed_candidates(self, candidates: Tensor) -> Tensor:
        """Candidate latents (B, L, F) -> (B, L, D)."""
        return self.frame_to_embed(candidates)

    def candidate_matrix(self) -> Tensor:
        """M (F, D) with embed_candidates(z) = z @ M + b, so that dE/dz = dE/dx @ M^T."""
        return self.frame_to_embed.weight.t()


class FrameTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, latent_dim: int):
        super().__init__()
        self.cfg = cfg
        self.latent_dim = latent_dim
        self.frame_to_embed = nn.Linear(latent_dim, cfg.dim, bias=True)
        self.transformer = Backbone(cfg)
        self.output = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.Linear(cfg.dim, latent_dim))
        init_weights(self)

    def observe(self, latents: Tensor, past: Optional[Observed] = None) -> Observed:
        """Run frames (B, S, F) after an optional KV cache; `.hidden` holds the normalised states (B, S, D)."""
        return self.transformer.observe(self.frame_to_embed(latents), past=past, need_hidden=True)

    def forward(self, latents: Tensor) -> Tensor:
        """The predicted latent of the frame after each of frames (B, S, F) -> (B, S, F)."""
        return self.output(self.observe(latents).hidden)
