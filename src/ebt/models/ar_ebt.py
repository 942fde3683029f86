"""The autoregressive EBT as a pure energy function: E(context, candidates, step) -> (B, L). `AREnergy` is the
energy over embedded items; `AREnergyModel` is text's (tokens, candidate distributions); `models/frames.py` has
video's (frame latents, continuous candidates).

No optimisation happens here (that is `ebt.thinking`). Parameter names follow the reference implementation
(`embeddings`, `vocab_to_embed`, `transformer.layers.*`, `transformer.norm`, `transformer.time_embeddings`,
`transformer.final_layer`) so reference checkpoints load by name.

Layout (docs/reference.md §2), with c = 1 for `time_embed` (a step token t prepended) and c = 0 otherwise:
- observed stream: [t]? o_0 .. o_{L-1} at positions 0 .. L-1+c, plain causal attention;
- prediction p_i (the candidate for token i+1) sits at position i+1+c and attends to observed tokens 0..i+c and
  itself. So the energy of p_i is what a causal transformer would say about the sequence x_0..x_i, p_i.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ebt.config import ModelConfig
from ebt.models import explicit, packing
from ebt.models.attention import causal_prefix_mask
from ebt.models.backbone import Backbone, Observed, init_weights
from ebt.models.layers import modulate
from ebt.ops.vocab import candidate_update, embed_probs

# conditionings under which the observed stream depends on the step index (so it is cached per step)
STEP_DEPENDENT_CONTEXT = ("time_embed", "adaln", "adaln_zero")


class FinalAdaLN(nn.Module):
    """adaLN final layer: shift/scale after the final norm, then the energy head."""

    def __init__(self, dim: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, 1, bias=False)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(cond).chunk(2, dim=-1)
        return self.linear(modulate(h, shift, scale))


class EnergyTransformer(Backbone):
    """Backbone + step embeddings + energy head (bias-free: a constant shift would get no gradient)."""

    def __init__(self, cfg: ModelConfig, num_landscapes: int):
        adaln = cfg.conditioning.startswith("adaln")
        super().__init__(cfg, adaln=adaln)
        if cfg.conditioning != "none":
            self.time_embeddings = nn.Embedding(num_landscapes, cfg.dim)
        self.final_layer = FinalAdaLN(cfg.dim) if adaln else nn.Linear(cfg.dim, 1, bias=False)


class AREnergy(nn.Module):
    """The autoregressive energy function over embedded inputs: subclasses give the input layers (`observe` embeds
    context items, `embed_candidates` embeds candidates) and call `_build(cfg, num_landscapes)` after creating them."""

    def _build(self, cfg: ModelConfig, num_landscapes: int) -> None:
        self.cfg = cfg
        self.num_landscapes = num_landscapes
        self.transformer = EnergyTransformer(cfg, num_landscapes)
        init_weights(self)
        if cfg.conditioning == "adaln":  # the reference keeps PyTorch's default init for plain adaLN modulation
            for m in self.modules():
                if isinstance(m, nn.Sequential):
                    m[1].reset_parameters()
        if cfg.conditioning == "adaln_zero":
            for m in self.modules():
                if isinstance(m, nn.Sequential):
                    nn.init.zeros_(m[1].weight)
                    nn.init.zeros_(m[1].bias)
            nn.init.zeros_(self.transformer.final_layer.linear.weight)

    # ---- conditioning helpers -------------------------------------------------------------------------------
    @property
    def prefix(self) -> int:
        """Number of tokens in front of the observed stream (the step token of `time_embed`)."""
        return 1 if self.cfg.conditioning == "time_embed" else 0

    @property
    def context_depends_on_step(self) -> bool:
        return self.cfg.conditioning in STEP_DEPENDENT_CONTEXT

    def _cond(self, step: int, batch: int) -> Optional[Tensor]:
        if not self.cfg.conditioning.startswith("adaln"):
            return None
        return self.transformer.time_embeddings.weight[step].expand(batch, -1)  # (B, D)

    def _step_token(self, step: int, batch: int) -> Tensor:
        return self.transformer.time_embeddings.weight[step].expand(batch, 1, -1)  # (B, 1, D)

    # ---- the two streams -------------------------------------------------------------------------------------
    def observe_embedded(self, x: Tensor, step: int = 0, past: Optional[Observed] = None) -> Observed:
        """Observed stream of embedded context items x (B, S, D), appended to `past` if given (KV cache)."""
        if self.prefix and (past is None or past.length == 0):
            x = torch.cat([self._step_token(step, x.shape[0]), x], dim=1)
        if explicit.can_extend(past, x):   # inference, appending to a preallocated cache (generation)
            return explicit.extend(self, self.packed(step).layers, x, past, self.cfg)
        return self.transformer.observe(x, cond=self._cond(step, x.shape[0]), past=past)

    def energy(self, obs: Observed, candidates: Tensor, step: int = 0, start: int = 0) -> Tensor:
        """Energies (B, L) of candidates (B, L, ...) for the items after context positions start .. start+L-1.

        Candidate i predicts the item after context position start+i and sees observed items 0..start+i.
        """
        return self.energy_of_embedding(obs, self.embed_candidates(candidates), step, start)

    def energy_of_embedding(self, obs: Observed, x: Tensor, step: int = 0, start: int = 0) -> Tensor:
        """`energy` from the embedded candidates x = embed_candidates(candidates) (B, L, D)."""
        B, L, _ = x.shape
        if self.cfg.conditioning == "pred_embed":
            x = x + self.transformer.time_embeddings.weight[step]
        index = torch.arange(start, start + L, device=x.device)            # context position of each candidate
        positions = index + 1 + self.prefix                                # RoPE position of the predicted item
        allowed = causal_prefix_mask(L, obs.length, start + self.prefix, x.device)   # (L, S_obs)
        cond = self._cond(step, B)
        h = self.transformer.norm(self.transformer.predict(x, positions, obs, allowed, cond))
        if cond is not None:
            return self.transformer.final_layer(h, cond).squeeze(-1)
        return self.transformer.final_layer(h).squeeze(-1)

    # ---- the explicit inference passes (models/explicit.py) ---------------------------------------------------------
    def energy_and_grad(self, obs: Observed, x: Tensor, step: int = 0, start: int = 0) -> tuple[Tensor, Tensor]:
        """`energy_of_embedding` (B, L) and its gradient w.r.t. the embedded candidates x (B, L, D), by the explicit
        forward and hand-derived backward (inference: no tape; equal to autograd's to round-off)."""
        L = x.shape[1]
        offset = start + self.prefix                       # candidate i sees observed keys 0 .. offset + i
        visible = min(obs.length, offset + L)
        kv = obs.kv if visible == obs.length else [(k[:, :, :visible], v[:, :, :visible]) for k, v in obs.kv]
        rot = packing.rope_table(self, offset + L + 1, self.cfg.dim // self.cfg.heads, self.cfg.rope_theta, x)
        return explicit.compiled_or(explicit.energy_and_grad)(self.packed(step), x, rot[offset + 1:offset + 1 + L],
                                                              kv, None if L == 1 else offset)

    def train(self, mode: bool = True):
        if mode:   # packs built for validation or generation do not stay in memory through training
            packing.clear_packs(self)
        return super().train(mode)

    def packed(self, step: int) -> packing.Packed:
        """The weights of step index `step` as the explicit passes use them (cached until a weight changes)."""
        return packing.cached_pack(self, step, lambda: self._pack(step))

    @torch.no_grad()
    def _pack(self, step: int) -> packing.Packed:
        t, c = self.transformer, self.cfg
        if c.conditioning.startswith("adaln"):   # the step's modulation folds into every layer
            cond = t.time_embeddings.weight[step]
            layers = packing.pack_backbone(t, cond)
            head = t.final_layer.linear.weight[0]
            shift, scale = t.final_layer.adaLN_modulation(cond).chunk(2)
            final, bias = t.norm.weight * (1 + scale) * head * c.dim ** 0.5, shift @ head
        else:                                    # one copy of the layers for every step
            layers = packing.cached_pack(self, "layers", lambda: packing.pack_backbone(t, None))
            final, bias = t.norm.weight * t.final_layer.weight[0] * c.dim ** 0.5, None
        add = t.time_embeddings.weight[step] if c.conditioning == "pred_embed" else None
        return packing.Packed(layers, c.heads, c.norm_eps, final, bias, add)


class AREnergyModel(AREnergy):
    """The text EBT's energy: token embeddings for the context, candidate distributions (B, L, V) embedded by an
    untied Linear(V, D) (or as probability-weighted token embeddings, `prob_embed`)."""

    def __init__(self, cfg: ModelConfig, num_landscapes: int):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        if not cfg.prob_embed:
            self.vocab_to_embed = nn.Linear(cfg.vocab_size, cfg.dim, bias=False)
        self._build(cfg, num_landscapes)

    def observe(self, input_ids: Tensor, step: int = 0, past: Optional[Observed] = None) -> Observed:
        """Observed stream of input_ids (B, S), appended to `past` if given (KV cache)."""
        return self.observe_embedded(self.embeddings(input_ids), step, past)

    def embed_candidates(self, probs: Tensor) -> Tensor:
        """Candidate distributions (B, L, V) -> predicted embeddings (B, L, D)."""
        if self.cfg.prob_embed:
            return probs @ self.embeddings.weight.to(probs.dtype)
        return self.vocab_to_embed(probs)

    def candidate_matrix(self) -> Tensor:
        """M (V, D) with embed_candidates(p) = p @ M, so that dE/dp = dE/dx @ M^T."""
        return self.embeddings.weight if self.cfg.prob_embed else self.vocab_to_embed.weight.t()


class ContextEnergy:
    """E(candidates, step) for one fixed batch of contexts (token ids, or frame latents for video): the callable the
    thinking loop descends.

    Caches the observed stream (once, or once per step index when the conditioning makes it step-dependent).
    The cache is built under the grad mode active when this object was created, so at inference the observed
    stream holds no graph while the candidates still get their input gradient.
    """

    def __init__(self, model: AREnergy, input_ids: Tensor, obs: Optional[Observed] = None, start: int = 0):
        self.model = model
        self.input_ids = input_ids
        self.start = start
        self.grad_enabled = torch.is_grad_enabled()
        self.cache: dict[Optional[int], Observed] = {}
        if obs is not None:
            self.cache[None] = obs

    def observed(self, step: int) -> Observed:
        key = step if self.model.context_depends_on_step else None
        if key not in self.cache:
            with torch.set_grad_enabled(self.grad_enabled):
                self.cache[key] = self.model.observe(self.input_ids, step)
        return self.cache[key]

    def __call__(self, probs: Tensor, step: int) -> Tensor:
        return self.model.energy(self.observed(step), probs, step, self.start)

    # The thinking loop's fast path for constant candidates (System 1, inference): it differentiates the energy
    # w.r.t. the (B, L, D) embedding and lets these exact Functions handle the (B, L, V) side (models/vocab.py).
    def embed(self, probs: Tensor) -> Tensor:
        """Embedded candidates (B, L, D) for constant probs (B, L, V)."""
        return embed_probs(probs, self.model.candidate_matrix())

    def from_embedding(self, x: Tensor, step: int) -> Tensor:
        """Energies (B, L) of embedded candidates x (B, L, D)."""
        return self.model.energy_of_embedding(self.observed(step), x, step, self.start)

    def update(self, probs: Tensor, dx: Tensor, alpha: Tensor) -> Tensor:
        """probs - alpha * dE/dp, given dx = dE/dx (B, L, D) (any candidates embedded as probs @ M + b)."""
        return candidate_update(probs, dx, self.model.candidate_matrix(), alpha)

    @property
    def explicit(self) -> bool:
        """Whether the thinking loop may call `energy_and_grad` (explicit inference passes, models/explicit.py)."""
        return explicit.enabled_for(self.input_ids)

    def energy_and_grad(self, candidates: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Energies (B, L) of constant candidates (B, L, ...) and dE/dx (B, L, D) at their embedding x, without
        autograd (inference); `update` turns dx into the step."""
        x = self.model.embed_candidates(candidates)                                # (B, L, D)
        return self.model.energy_and_grad(self.observed(step), x, step, self.start)
