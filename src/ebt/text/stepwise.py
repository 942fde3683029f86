"""Stepwise gradients for System 1 training (`think.stepwise_grad`): hold one thinking step's graph, not all.

In S1 every step starts from detached candidates, so the loss mean_k CE_k is a sum of per-step terms that share
only the parameters and the observed stream's keys/values. Each step's second-order graph (the largest memory
item: activations of the forward and of the input-gradient pass) is therefore only needed for that step's own
term. Here, right after step k, the gradient of CE_k w.r.t. the parameters and w.r.t. the observed keys/values
(which the prediction stream sees as leaves) is taken with `torch.autograd.grad`, which frees the step's graph.
The returned loss has the value mean_k CE_k and a graph whose gradient is exactly the sum of those per-step
gradients: sum_p <p, G_p> / K for the parameters, and sum <kv, G_kv> / K through the observed stream, which is
back-propagated once. Gradients equal the joint backward's up to float summation order (tests/unit/test_gradients.py).

Costs the same compute (the per-step backward replaces part of the final one) plus one parameter-sized buffer.
Checked under DDP (2 gloo ranks: same gradients as one process, 2e-7 relative). Not used for FSDP2-sharded
parameters (a gradient taken inside the forward would bypass FSDP's hooks): those keep the joint backward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ebt.models.ar_ebt import AREnergyModel, ContextEnergy
from ebt.models.backbone import Observed
from ebt.ops.vocab import candidate_cross_entropy


class _LeafContext(ContextEnergy):
    """A ContextEnergy whose prediction stream sees the observed keys/values as leaves (gradients stop there)."""

    def __init__(self, model: AREnergyModel, input_ids: Tensor):
        super().__init__(model, input_ids)
        self.pairs: dict[int, tuple[Observed, list]] = {}   # id(observed with graph) -> (it, [(leaf k, leaf v)])

    def observed(self, step: int) -> Observed:
        obs = super().observed(step)
        if id(obs) not in self.pairs:
            leaves = [(k.detach().requires_grad_(True), v.detach().requires_grad_(True)) for k, v in obs.kv]
            self.pairs[id(obs)] = (obs, leaves)
        # the prediction stream gets views: non-leaf inputs, so that the fused attention can ask the autograd engine
        # whether their gradient is needed in the current pass (it cannot ask about leaves under autograd.grad)
        return Observed([(k.view_as(k), v.view_as(v)) for k, v in self.pairs[id(obs)][1]])

    def kv(self) -> tuple[list[Tensor], list[Tensor]]:
        """(observed keys/values with their graph, the matching leaves), flattened."""
        graph, leaves = [], []
        for obs, pairs in self.pairs.values():
            for (k, v), (lk, lv) in zip(obs.kv, pairs):
                graph += [k, v]
                leaves += [lk, lv]
        return graph, leaves


class StepwiseGradients:
    """Pass `energy` and `on_step` to the training descent, then take `loss()`."""

    @staticmethod
    def applies(model: nn.Module, think) -> bool:
        """S1 (detached steps, loss on every step) with ordinary parameters: a gradient taken inside the forward
        would bypass FSDP2's hooks on sharded (DTensor) parameters."""
        return (think.stepwise_grad and think.detach and not think.truncate
                and not any(type(p).__name__ == "DTensor" for p in model.parameters()))

    def __init__(self, model: nn.Module, energy_model: AREnergyModel, context: Tensor, targets: Tensor,
                 pad_id: int):
        # the step size is excluded: every step uses the same clamp(alpha) tensor, whose graph must survive until the
        # last step, so its per-step gradient is taken at that tensor and carried through the clamp once
        alpha_param = getattr(getattr(model, "thinker", None), "alpha", None)
        self.params = [p for p in model.parameters() if p.requires_grad and p is not alpha_param]
        self.energy = _LeafContext(energy_model, context)
        self.targets, self.pad_id = targets, pad_id
        self.param_grads: list[Optional[Tensor]] = [None] * len(self.params)
        self.kv_grads: list[Optional[Tensor]] = []
        self.alpha: Optional[Tensor] = None
        self.alpha_grad: list[Optional[Tensor]] = [None]
        self.ces: list[Tensor] = []

    @staticmethod
    def _accumulate(acc: list, grads) -> None:
        for i, g in enumerate(grads):
            if g is not None:
                acc[i] = g if acc[i] is None else acc[i].add_(g)

    def on_step(self, i: int, z: Tensor, e: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """Take CE_i's gradient now (freeing step i's graph); keep detached logits and energies."""
        ce = candidate_cross_entropy(z, self.targets, self.pad_id, self.energy.model.cfg.compile_kernels)
        _, leaves = self.energy.kv()
        extra = [alpha] if alpha.requires_grad else []
        if self.alpha is not None and extra and alpha is not self.alpha:
            raise RuntimeError("think.stepwise_grad expects one step-size tensor for all steps")
        self.alpha = alpha if extra else None
        grads = torch.autograd.grad(ce, self.params + leaves + extra, allow_unused=True)
        n = len(self.params)
        self._accumulate(self.param_grads, grads[:n])
        self.kv_grads += [None] * (len(leaves) - len(self.kv_grads))
        self._accumulate(self.kv_grads, grads[n:n + len(leaves)])
        self._accumulate(self.alpha_grad, grads[n + len(leaves):])
        self.ces.append(ce.detach())
        return z.detach(), e.detach()

    def loss(self) -> Tensor:
        """mean_k CE_k, carrying exactly the gradient mean_k dCE_k/dtheta (see the module docstring)."""
        pairs = [(p, g) for p, g in zip(self.params, self.param_grads) if g is not None]
        if self.alpha is not None and self.alpha_grad[0] is not None:
            pairs.append((self.alpha, self.alpha_grad[0]))
        graph, _ = self.energy.kv()
        pairs += [(t, g) for t, g in zip(graph, self.kv_grads) if g is not None and t.requires_grad]
        tensors, grads = [t for t, _ in pairs], [g for _, g in pairs]
        return _CarryGradients.apply(torch.stack(self.ces).mean(), grads, len(self.ces), *tensors)


class _CarryGradients(torch.autograd.Function):
    """value -> value, whose backward hands each of `tensors` its precomputed gradient / n times the incoming
    adjoint. The same gradients as a carrier sum_i <t_i, G_i> / n, without forming the products t_i * G_i."""

    @staticmethod
    def forward(ctx, value, grads, n, *tensors):
        ctx.grads, ctx.n = grads, n
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        scale = dout / ctx.n
        return (None, None, None, *[g.mul(scale.to(g.dtype)) for g in ctx.grads])
