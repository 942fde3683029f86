"""Generation's decoders: what a model does for each new token, behind one interface that `generation.decode` calls
(`first()`: the logits after the window; `advance(token)`: append a token, the logits after it).

- `CacheDecoder` (any model, any thinking options): the models' KV-cache interface, `start_cache`,
  `extend_cache` and `next_logits`, one call each per token.
- `StaticDecoder` (the explicit inference passes with the plain options: trained or longer schedule, one sample, no
  adaptive stopping): one function of fixed shapes per token. The token is written into static KV buffers (one per
  cache key: every step's for conditionings whose context sees the step), then the EBT's candidate descends
  (`ebt_token`) or the Transformer++'s head reads the new state (`transformer_token`). Attention runs over the whole
  buffer, masked past the newest position, and positions are tensors, so the shapes never change while the window
  grows: under `inference_path("compiled")` torch.compile captures each token as one graph (one guard check, a
  fixed sequence of fused kernels) instead of ~1,300 operator calls from Python (docs/performance.md#inference).
The weights are read when the decoder starts (a decoder lives for one `generate` call, under no_grad), directly, as
the explicit passes read them: hooks or replaced modules are not seen (run such models with --inference autograd).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ebt.errors import NonFinite
from ebt.models import explicit
from ebt.models.backbone import Observed
from ebt.models.packing import Packed, PackedLayer, rope_table
from ebt.models.transformer_pp import head_logits
from ebt.ops.vocab import candidate_update, embed_probs
from ebt.text.inference import Prediction, ThinkResult, start_logits
from ebt.thinking import NON_FINITE, ThinkOptions

KV = list[tuple[Tensor, Tensor]]
"""One cache: (K, V) per layer, each (B, H, capacity, hd)."""


class CacheDecoder:
    """Any model and options: the model's KV-cache interface, one call each per token."""

    def __init__(self, model, window: Tensor, options: Optional[ThinkOptions], generator, final_energy: bool):
        self.model, self.window, self.options = model, window, options
        self.generator, self.final_energy = generator, final_energy
        self.cache = model.start_cache(window)

    def _next(self) -> Prediction:
        return self.model.next_logits(self.window, self.cache, self.options, self.generator, self.final_energy)

    def first(self) -> Prediction:
        return self._next()

    def advance(self, token: Tensor) -> Prediction:
        """token (B, 1) appended to the window and the cache."""
        self.window = torch.cat([self.window, token], dim=1)
        self.cache = self.model.extend_cache(self.cache, token)
        return self._next()


def plain_options(options: Optional[ThinkOptions], final_energy: bool) -> bool:
    """Whether `StaticDecoder` covers these options: one sample, no noise, every step taken, no extra pass."""
    o = options or ThinkOptions()
    return (o.samples == 1 and o.langevin_std == 0 and not o.accept_lower and o.tol is None
            and not final_energy)


# ---- the per-token functions (pure: tensors in, tensors out; compiled whole on the compiled path) ---------------
def _static_mask(buffers: KV, pos: Tensor) -> Tensor:
    """(capacity,) True at the buffer positions after pos (1,): not yet written, never attended."""
    return torch.arange(buffers[0][0].shape[2], device=pos.device) > pos


def ebt_token(token: Tensor, pos: Tensor, z0: Tensor, packs: list[Packed], caches: list[KV],
              plan: tuple[tuple[int, ...], tuple[tuple[int, int], ...]], emb: Tensor, M: Tensor, table: Tensor,
              alpha: Tensor, from_logits: bool) -> tuple[Tensor, Tensor, Tensor]:
    """One EBT token: token (B, 1) is observed at position pos (1,) in every cache, then the candidate for the next
    token descends from z0 (B, 1, V). plan = (observers, steps): cache i is written by the layers of
    packs[observers[i]]; each step is (pack, cache) indices. (Every object is passed once and the plan as integers:
    an object passed twice would make torch.compile check their identities in Python on every call.)
    Returns the final logits (B, 1, V), the energy before each step (steps, B, 1) and whether the logits are all
    finite (the thinking loop's final check, inside the graph). The update is the thinking loop's (`Thinker.step`'s
    explicit branch): z' = base - alpha dE/dp."""
    observers, steps = plan
    heads, eps = packs[0].heads, packs[0].eps
    blocked = _static_mask(caches[0], pos)                                               # (capacity,)
    x = F.embedding(token, emb)                                                          # (B, 1, D)
    rot = table.index_select(0, pos)                                                     # (1, 1, hd/2, 2)
    for buffers, k in zip(caches, observers):
        explicit.observe(packs[k].layers, heads, eps, x, rot, buffers, pos, False, blocked)
    rot = table.index_select(0, pos + 1)          # the candidate sits one position after the newest token
    z, energies = z0, []
    for k, c in steps:
        p = z.softmax(-1)                                                                # (B, 1, V)
        e, dx = explicit.energy_and_grad(packs[k], embed_probs(p, M), rot, caches[c], None, blocked)
        z = candidate_update(z if from_logits else p, dx, M, alpha)
        energies.append(e)
    return z, torch.stack(energies), torch.isfinite(z).all()


def transformer_token(token: Tensor, pos: Tensor, layers: list[PackedLayer], buffers: KV, heads: int, eps: float,
                      emb: Tensor, norm_weight: Tensor, head: Tensor, table: Tensor) -> Tensor:
    """One Transformer++ token: token (B, 1) observed at position pos (1,); the next-token logits (B, V) through the
    output head's weight `head` (V, D)."""
    out = explicit.observe(layers, heads, eps, F.embedding(token, emb), table.index_select(0, pos), buffers, pos,
                           True, _static_mask(buffers, pos))                              # (B, 1, D)
    return head_logits(explicit.normalised(out, eps, norm_weight), head)[:, -1]


# ---- the decoders ------------------------------------------------------------------------------------------------
def _eager():
    """Prefills run on the eager explicit passes: their work is arithmetic, and a graph of their own (a one-token
    prefill would take the compiled `observe`) would cost one more compile."""
    return explicit.inference_path("explicit")


class StaticDecoder:
    """Static buffers and the position of the newest observed token. The window but its last token is observed
    when the decoder starts; `first()` appends that last token like any other (every token costs one call of the
    same function); subclasses give `_token`."""

    def __init__(self, window: Tensor, length: int, capacity: int):
        if length + 1 > capacity:
            raise ValueError(f"a window of {window.shape[1]} tokens does not fit the model's context: shorten it")
        self.window, self.length, self.capacity = window, length, capacity   # observed positions filled, room
        self.pos = torch.tensor([length], device=window.device)   # the same, on the device (no copy per token)

    def first(self) -> Prediction:
        return self.advance(self.window[:, -1:])

    def advance(self, token: Tensor) -> Prediction:
        """token (B, 1) appended; the prediction after it."""
        if self.length >= self.capacity:
            raise ValueError(f"the decoder's buffers hold {self.capacity} positions: start a new one")
        # a fresh (B, 1) int64 copy: a slice of the window and a sampled token then share strides and dtype (no
        # recompiling)
        token = torch.empty(token.shape, dtype=torch.long, device=token.device).copy_(token)
        out = self._token(token, self.pos)
        self.length += 1
        self.pos.add_(1)
        return out

    def _token(self, token: Tensor, pos: Tensor) -> Prediction:
        raise NotImplementedError


class EBTStaticDecoder(StaticDecoder):
    def __init__(self, model, window: Tensor, options: Optional[ThinkOptions], generator):
        energy, thinker, cfg = model.energy, model.thinker, model.cfg
        self.model, self.generator = model, generator
        self.opts = options or ThinkOptions()
        self.emb, self.M = energy.embeddings.weight, energy.candidate_matrix()
        hd, capacity = cfg.dim // cfg.heads, cfg.context + energy.prefix
        super().__init__(window, window.shape[1] - 1 + energy.prefix, capacity)
        # one cache per key (every step's when the context sees the step), holding the window but its last token
        keyed = energy.context_depends_on_step
        self.cache = {}
        for key in (range(energy.num_landscapes) if keyed else [None]):
            empty = Observed.allocate(window.shape[0], cfg.layers, cfg.heads, capacity, hd, self.emb)
            step = 0 if key is None else key
            with _eager():
                self.cache[key] = (energy.observe(window[:, :-1], step, past=empty)
                                   if window.shape[1] > 1 or energy.prefix else empty)
        self.packs = [energy.packed(k) for k in range(energy.num_landscapes)]
        if explicit.compiling():   # one copy of each weight (PackedLayer.with_views)
            self.packs = [p.with_views() for p in self.packs]
        self.caches = [o.buffers for o in self.cache.values()]
        schedule = thinker.inference_schedule(self.opts.steps, self.opts.final_landscape_only)
        keys = list(self.cache)
        self.plan = (tuple(0 if k is None else k for k in keys),
                     tuple((k, keys.index(k if keyed else None)) for k in schedule))
        self.table = rope_table(energy, capacity + 1, hd, cfg.rope_theta, self.emb)[:capacity + 1]   # fixed shape
        self.alpha = thinker.options_alpha(self.opts, window.device)
        self.from_logits = thinker.steps_from_logits
        self.fn = explicit.compiled_or(ebt_token, static=True, device_type=window.device.type)

    def _token(self, token: Tensor, pos: Tensor) -> Prediction:
        z0 = start_logits(self.model, token.shape[0], 1, self.opts, token.device, self.generator)   # (B, 1, V)
        z, energies, finite = self.fn(token, pos, z0, self.packs, self.caches, self.plan, self.emb, self.M,
                                      self.table, self.alpha, self.from_logits)
        if not finite:   # a diverged model or step size
            raise NonFinite(NON_FINITE)
        n = len(self.plan[1])
        used = torch.full(z.shape[:-1], n, dtype=torch.long, device=z.device)
        return Prediction(z[:, -1], n, ThinkResult(z, energies, None, used, n))


class TransformerStaticDecoder(StaticDecoder):
    def __init__(self, model, window: Tensor):
        net, cfg = model.net, model.cfg
        hd = cfg.dim // cfg.heads
        super().__init__(window, window.shape[1] - 1, cfg.context)
        self.cache = Observed.allocate(window.shape[0], cfg.layers, cfg.heads, cfg.context, hd,
                                       net.embeddings.weight)
        if window.shape[1] > 1:
            with _eager():
                self.cache = net.observe(window[:, :-1], past=self.cache, need_hidden=False)
        self.net, self.layers, self.heads, self.eps = net, net.packed_layers(), cfg.heads, cfg.norm_eps
        if explicit.compiling():   # one copy of each weight (PackedLayer.with_views)
            self.layers = [lay.with_views() for lay in self.layers]
        self.table = rope_table(net, cfg.context, hd, cfg.rope_theta, net.embeddings.weight)[:cfg.context]
        self.fn = explicit.compiled_or(transformer_token, static=True, device_type=window.device.type)

    def _token(self, token: Tensor, pos: Tensor) -> Prediction:
        n = self.net
        return Prediction(self.fn(token, pos, self.layers, self.cache.buffers, self.heads, self.eps,
                                  n.embeddings.weight, n.transformer.norm.weight, n.output.weight, self.table))
