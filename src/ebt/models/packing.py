"""The weights of the explicit inference passes (`models/explicit.py`), packed once per step index and cached on the
model until a weight changes.

The step conditioning folds into them: adaLN's shift becomes a bias of the next projection, its scale and the
RMSNorm weight (times sqrt(D), see `explicit._rms`) scale that projection's input columns, its gate scales the
output rows; `pred_embed` is an added vector (x + t_k); `time_embed` only touches the observed stream (the step
token). q, k, v come from one (3D, D) matrix with the attention scale 1/sqrt(hd) folded into the q rows, and the
energy head is one vector u (E = rmsnorm(h) . u + c).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ebt.models.layers import rope_angles
from ebt.ops.common import upcast


@dataclass
class PackedLayer:
    """One block's weights for the explicit passes (see the module docstring for the folding)."""
    wqkv: Tensor
    """(3D, D): [Wq / sqrt(hd); Wk; Wv] with the attention norm's weight (x (1 + adaLN scale)) in its columns."""
    bqkv: Optional[Tensor]
    """(3D,) adaLN shift through wqkv, or None."""
    wo: Tensor
    """(D, D), rows scaled by the adaLN attention gate."""
    w13: Tensor
    """(2F, D): [W1; W3] with the FFN norm's weight (x (1 + adaLN scale)) in its columns."""
    b13: Optional[Tensor]
    w2: Tensor
    """(D, F), rows scaled by the adaLN FFN gate."""
    # the same four matrices transposed: on CPU contiguous copies, since a row times an (in, out) matrix is ~35%
    # faster per call than times a transposed view at batch 1 (the backward uses the (out, in) originals); on GPUs,
    # whose matmuls take either layout at the same speed, views (no second copy of the weights)
    wqkv_t: Tensor = None
    wo_t: Tensor = None
    w13_t: Tensor = None
    w2_t: Tensor = None

    def __post_init__(self) -> None:
        def t(w: Tensor) -> Tensor:
            return w.t().contiguous() if w.device.type == "cpu" else w.t()
        self.wqkv_t, self.wo_t, self.w13_t, self.w2_t = t(self.wqkv), t(self.wo), t(self.w13), t(self.w2)

    def with_views(self) -> "PackedLayer":
        """This layer with the transposed matrices as views of the originals: what a compiled graph reads (its fused
        loops take either layout, and a token then reads each weight from one copy: measured 1.4x faster per token
        at lm-tiny width on CPU)."""
        out = copy.copy(self)
        out.wqkv_t, out.wo_t, out.w13_t, out.w2_t = self.wqkv.t(), self.wo.t(), self.w13.t(), self.w2.t()
        return out


@dataclass
class Packed:
    """Every layer of one step index, plus the final norm folded into what follows it."""
    layers: list[PackedLayer]
    heads: int
    eps: float
    final: Tensor
    """(D,): the energy head u, times sqrt(D) (see `_rms`): E = rmsnorm(h) . u + c."""
    final_bias: Optional[Tensor] = None
    """Scalar: the adaLN final shift through the energy head, or None."""
    add: Optional[Tensor] = None
    """(D,) added to every embedded candidate (`pred_embed`'s step embedding), or None."""

    def with_views(self) -> "Packed":
        """The same with every layer's `PackedLayer.with_views`."""
        return dataclasses.replace(self, layers=[lay.with_views() for lay in self.layers])


def _chunks(mod: Optional[nn.Module], cond: Optional[Tensor], n: int) -> list[Optional[Tensor]]:
    if mod is None or cond is None:
        return [None] * n
    return list(mod(cond).chunk(n, dim=-1))


def _fold_norm(w: Tensor, norm_w: Tensor, scale: Optional[Tensor], shift: Optional[Tensor]):
    """W (out, in) applied to (n * norm_w (1 + scale) + shift) with n = sqrt(D) n' (see `_rms`): the weight with
    scaled columns, and the bias W shift."""
    col = norm_w * w.shape[1] ** 0.5
    col = col if scale is None else col * (1 + scale)
    return w * col, (None if shift is None else w @ shift)


def _gate_rows(w: Tensor, gate: Optional[Tensor]) -> Tensor:
    return w if gate is None else w * gate[:, None]


@torch.no_grad()
def pack_backbone(backbone: nn.Module, cond: Optional[Tensor]) -> list[PackedLayer]:
    """PackedLayers of a `Backbone` under adaLN conditioning vector cond (D,) (None: no adaLN)."""
    scale = 1.0 / (backbone.head_dim ** 0.5)
    out = []
    for layer in backbone.layers:
        a = layer.attention
        sh1, sc1, g1, sh2, sc2, g2 = _chunks(getattr(layer, "adaLN_modulation", None), cond, 6)
        wqkv, bqkv = _fold_norm(torch.cat([a.wq.weight * scale, a.wk.weight, a.wv.weight]),
                                layer.attention_norm.weight, sc1, sh1)
        ff = layer.feed_forward
        w13, b13 = _fold_norm(torch.cat([ff.w1.weight, ff.w3.weight]), layer.ffn_norm.weight, sc2, sh2)
        out.append(PackedLayer(wqkv, bqkv, _gate_rows(a.wo.weight, g1), w13, b13, _gate_rows(ff.w2.weight, g2)))
    return out


def _params_key(module: nn.Module) -> tuple:
    """Identity, storage and version of every parameter, read afresh through its owning module (replaced parameters
    and `load_state_dict(assign=True)` are seen); the owners are listed once, since walking the module tree costs
    more than a decode step. In-place changes through `.data` bump no version the pack can see: call `clear_packs`."""
    owners = module.__dict__.get("_explicit_owners")
    if owners is None:
        owners = module.__dict__["_explicit_owners"] = [
            (m, name) for m in module.modules() for name in m._parameters]
    params = [m._parameters[name] for m, name in owners]
    return tuple((id(p), p.data_ptr(), p._version, p.dtype) for p in params if p is not None)


def clear_packs(module: nn.Module) -> None:
    """Drop the packed weights cached on `module` (they are rebuilt on next use). `train()` calls it, so packs built
    for validation do not stay in memory through training."""
    for key in ("_explicit_packs", "_explicit_owners", "_explicit_rope"):
        module.__dict__.pop(key, None)


def cached_pack(module: nn.Module, key, build) -> Packed:
    """build() cached on `module` under `key`, rebuilt whenever any parameter changed (in place or moved)."""
    cache = module.__dict__.setdefault("_explicit_packs", {})
    version = _params_key(module)
    hit = cache.get(key)
    if hit is None or hit[0] != version:
        hit = (version, build())
        cache[key] = hit
    return hit[1]


def rope_table(module: nn.Module, length: int, head_dim: int, theta: float, like: Tensor) -> Tensor:
    """(P, 1, hd/2, 2) rotations (cos, sin) for positions 0..P-1 (P >= length), cached on `module` and grown as
    needed; float64 for float64 inputs, else float32."""
    table = module.__dict__.get("_explicit_rope")
    dtype = upcast(like).dtype
    if table is None or table.shape[0] < length or table.dtype != dtype or table.device != like.device:
        size = max(length, 2 * (0 if table is None else table.shape[0]))
        cos, sin = rope_angles(torch.arange(size, device=like.device), head_dim, theta)   # float64 (P, hd/2)
        table = torch.stack([cos, sin], -1).to(dtype)[:, None]
        module.__dict__["_explicit_rope"] = table
    return table
