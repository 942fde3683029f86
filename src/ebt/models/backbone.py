"""The Llama-style backbone shared by the autoregressive EBT and the Transformer++ baseline.

It runs two kinds of token streams (docs/reference.md §2):
- the *observed* stream: an ordinary causal transformer over context tokens; its keys/values are returned so they
  can be reused across optimisation steps, best-of-N candidates and generated tokens (a KV cache);
- the *prediction* stream: candidate tokens that attend to a prefix of the observed keys and to themselves only.
Computing the two streams separately is exactly equivalent to the reference's (2L)x(2L) masked sequence, and lets
the observed stream be computed once when the step conditioning does not touch it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ebt.config import ModelConfig
from ebt.models.attention import observed_attention, prediction_attention, query_blocked_attention
from ebt.models.layers import Attention, RMSNorm, SwiGLU, modulate, rope_angles
from ebt.ops.prediction_attention import fused_prediction_attention


@dataclass
class Observed:
    """Keys/values of the observed stream, per layer, each (B, H, S, hd); `hidden` is the final hidden state
    (B, S, D) when it was asked for (Transformer++), else None."""
    kv: list[tuple[Tensor, Tensor]]
    hidden: Optional[Tensor] = None
    buffers: Optional[list[tuple[Tensor, Tensor]]] = None
    """Preallocated (B, H, capacity, hd) storage that `kv` are views of: appending a token then writes one slot
    instead of copying the whole cache (set by `with_capacity`; inference only)."""

    @property
    def length(self) -> int:
        return self.kv[0][0].shape[2]

    @staticmethod
    def allocate(batch: int, layers: int, heads: int, capacity: int, head_dim: int, like: Tensor) -> "Observed":
        """An empty cache (length 0) with buffers of `capacity` positions, in like's dtype and device: the explicit
        passes append to it (`explicit.extend`). Zeros, not uninitialised memory: static decoding
        (`text/decoding.py`) attends over whole buffers with zero weights on the free slots, and 0 x NaN is NaN."""
        buffers = [tuple(like.new_zeros(batch, heads, capacity, head_dim) for _ in range(2)) for _ in range(layers)]
        return Observed([(k[:, :, :0], v[:, :, :0]) for k, v in buffers], None, buffers)

    def with_capacity(self, capacity: int) -> "Observed":
        """Copy the cache into buffers that can grow to `capacity` positions without reallocating (the free slots are
        never read: `kv` are views of the filled ones)."""
        buffers, kv = [], []
        for k, v in self.kv:
            kb = k.new_empty(*k.shape[:2], max(capacity, k.shape[2]), k.shape[3])
            vb = v.new_empty(*v.shape[:2], max(capacity, v.shape[2]), v.shape[3])
            kb[:, :, :k.shape[2]], vb[:, :, :v.shape[2]] = k, v
            buffers.append((kb, vb))
            kv.append((kb[:, :, :k.shape[2]], vb[:, :, :v.shape[2]]))
        return Observed(kv, self.hidden, buffers)

    def repeat(self, n: int) -> "Observed":
        """Repeat every batch row n times (row b -> rows b*n .. b*n+n-1), for best-of-N candidates."""
        kv = [(k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in self.kv]
        return Observed(kv, None if self.hidden is None else self.hidden.repeat_interleave(n, 0))


class Block(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then + SwiGLU(RMSNorm(x)); optional adaLN modulation."""

    def __init__(self, cfg: ModelConfig, adaln: bool = False):
        super().__init__()
        self.attention = Attention(cfg.dim, cfg.heads)
        self.feed_forward = SwiGLU(cfg.dim, int(cfg.dim * cfg.ffn_mult), cfg.compile_kernels)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.compile_kernels)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.compile_kernels)
        attn = (partial(fused_prediction_attention, compiled=cfg.compile_kernels) if cfg.attn_impl == "fused"
                else prediction_attention)
        self.prediction_attention = (attn if cfg.attn_query_blocks == 1
                                     else partial(query_blocked_attention, attn, cfg.attn_query_blocks))
        if adaln:  # shift/scale/gate for attention and FFN from the step embedding
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))

    def modulation(self, cond: Optional[Tensor]) -> tuple:
        if cond is None:
            return (None,) * 6
        return self.adaLN_modulation(cond).chunk(6, dim=-1)  # each (B, D)

    @staticmethod
    def _norm(norm: RMSNorm, x: Tensor, shift: Optional[Tensor], scale: Optional[Tensor]) -> Tensor:
        h = norm(x)
        return h if shift is None else modulate(h, shift, scale)

    @staticmethod
    def _gate(x: Tensor, gate: Optional[Tensor]) -> Tensor:
        return x if gate is None else gate[:, None] * x

    def _ffn(self, x: Tensor, mods: tuple) -> Tensor:
        _, _, _, shift, scale, gate = mods
        return x + self._gate(self.feed_forward(self._norm(self.ffn_norm, x, shift, scale)), gate)

    def observe(self, x: Tensor, rope: tuple[Tensor, Tensor], allowed: Tensor, mods: tuple,
                past: Optional[tuple[Tensor, Tensor]], need_output: bool,
                buffer: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Optional[Tensor], Tensor, Tensor]:
        """Causal self-attention over observed tokens x (B, S, D); returns (output or None, k_all, v_all)."""
        shift, scale, gate = mods[:3]
        q, k, v = self.attention.qkv(self._norm(self.attention_norm, x, shift, scale), *rope)
        if buffer is not None:  # write into preallocated storage (no copy of the past)
            start, end = past[0].shape[2], past[0].shape[2] + k.shape[2]
            buffer[0][:, :, start:end], buffer[1][:, :, start:end] = k, v
            k, v = buffer[0][:, :, :end], buffer[1][:, :, :end]
        elif past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if not need_output:  # the last layer's observed output is never read by an EBT
            return None, k, v
        x = x + self._gate(self.attention.out(observed_attention(q, k, v, allowed, causal=past is None)), gate)
        return self._ffn(x, mods), k, v

    def predict(self, x: Tensor, rope: tuple[Tensor, Tensor], kv: tuple[Tensor, Tensor], allowed: Tensor,
                mods: tuple) -> Tensor:
        """Prediction tokens x (B, L, D) attend to the allowed observed keys and to themselves."""
        shift, scale, gate = mods[:3]
        q, k, v = self.attention.qkv(self._norm(self.attention_norm, x, shift, scale), *rope)
        x = x + self._gate(self.attention.out(self.prediction_attention(q, kv[0], kv[1], k, v, allowed)), gate)
        return self._ffn(x, mods)


class Backbone(nn.Module):
    """`layers` + final `norm`; the heads live in the models that use it."""

    def __init__(self, cfg: ModelConfig, adaln: bool = False):
        super().__init__()
        self.cfg = cfg
        self.head_dim = cfg.dim // cfg.heads
        self.layers = nn.ModuleList(Block(cfg, adaln) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.compile_kernels)

    def rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        return rope_angles(positions, self.head_dim, self.cfg.rope_theta)

    def observe(self, x: Tensor, cond: Optional[Tensor] = None, past: Optional[Observed] = None,
                need_hidden: bool = False) -> Observed:
        """Run the causal observed stream on x (B, S, D), continuing after `past` (a KV cache) if given.

        Token r of x sits at absolute position past.length + r and attends to every earlier position.
        """
        start = past.length if past is not None else 0
        S = x.shape[1]
        positions = torch.arange(start, start + S, device=x.device)
        rope = self.rope(positions)
        allowed = torch.arange(start + S, device=x.device)[None, :] <= positions[:, None]  # (S, start+S)
        kv = []
        buffers = past.buffers if past is not None and past.buffers is not None else None
        if buffers is not None and start + S > buffers[0][0].shape[2]:
            buffers = None  # outgrew the preallocated storage: fall back to concatenation
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            x_new, k, v = self._block("observed", layer.observe, x, rope, allowed, layer.modulation(cond),
                                      past.kv[i] if past is not None else None, need_output=need_hidden or not last,
                                      buffer=buffers[i] if buffers is not None else None)
            kv.append((k, v))
            x = x_new if x_new is not None else x
        return Observed(kv, self.norm(x) if need_hidden else None, buffers)

    def predict(self, x: Tensor, positions: Tensor, obs: Observed, allowed: Tensor,
                cond: Optional[Tensor] = None) -> Tensor:
        """Prediction stream x (B, L, D) at RoPE `positions` (L,); allowed (L, S_obs) -> hidden (B, L, D)."""
        rope = self.rope(positions)
        for layer, kv in zip(self.layers, obs.kv):
            x = self._block("prediction", layer.predict, x, rope, kv, allowed, layer.modulation(cond))
        return x

    def _block(self, stream: str, fn, *args, **kwargs):
        """fn(*args) with activation checkpointing when ModelConfig.checkpointing covers this stream: the block's
        activations are recomputed in the backward passes instead of kept (exact; double backward works with
        non-reentrant checkpointing)."""
        mode = self.cfg.checkpointing
        if torch.is_grad_enabled() and mode in (stream, "all"):
            return checkpoint(fn, *args, use_reentrant=False, **kwargs)
        return fn(*args, **kwargs)


def init_weights(module: nn.Module) -> None:
    """Reference initialisation: xavier-normal Linear weights, zero biases; embeddings keep N(0, 1)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
