"""Transformer++ baseline: the same Llama-style backbone with an untied output head (docs/reference.md §7)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ebt.config import ModelConfig
from ebt.models import explicit, packing
from ebt.models.backbone import Backbone, Observed, init_weights
from ebt.ops.common import upcast
from ebt.ops.vocab import vocab_logits


class TransformerPP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.transformer = Backbone(cfg)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        init_weights(self)

    def observe(self, input_ids: Tensor, past: Optional[Observed] = None, need_hidden: bool = True) -> Observed:
        """Run input_ids (B, S) after an optional KV cache; `.hidden` holds the normalised states (B, S, D), or is
        None without need_hidden (a prefill that only fills the cache skips the last layer's attention and MLP)."""
        x = self.embeddings(input_ids)
        if explicit.can_extend(past, x):   # inference, appending to a preallocated cache (generation)
            return explicit.extend(self, self.packed_layers(), x, past, self.cfg,
                                   final_norm=self.transformer.norm.weight if need_hidden else None)
        return self.transformer.observe(x, past=past, need_hidden=need_hidden)

    def train(self, mode: bool = True):
        if mode:   # packs built for generation do not stay in memory through training
            packing.clear_packs(self)
        return super().train(mode)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Next-token logits (B, S, V)."""
        return self.head(self.observe(input_ids).hidden)

    def head(self, hidden: Tensor) -> Tensor:
        """Normalised states (..., D) -> float logits (..., V) (the matmul at an aligned width on CUDA)."""
        return head_logits(hidden, self.output.weight)

    def packed_layers(self) -> list[packing.PackedLayer]:
        """The layers as the explicit passes use them (cached until a weight changes)."""
        return packing.cached_pack(self, "layers", lambda: packing.pack_backbone(self.transformer, None))


def head_logits(hidden: Tensor, weight: Tensor) -> Tensor:
    """The output head: normalised states (..., D) @ weight (V, D)^T -> float logits (..., V)."""
    return upcast(vocab_logits(hidden, weight))
