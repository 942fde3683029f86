"""Language-model objectives: energy function + thinking -> loss (text EBT), and the Transformer++ baseline.

Both wrappers share one interface used by the trainer, evaluation and generation:
    forward(input_ids (B, L+1)) -> LMOutput(loss, metrics, ...)     targets are input_ids[:, 1:], pad id ignored
    param_groups(optim_cfg)     -> AdamW parameter groups
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt import noise
from ebt.config import ModelConfig, OptimConfig, RunConfig, ThinkConfig
from ebt.models.ar_ebt import AREnergyModel, ContextEnergy
from ebt.models.fused_ops import upcast
from ebt.models.transformer_pp import TransformerPP
from ebt.models.vocab import candidate_cross_entropy
from ebt.stepwise import StepwiseGradients
from ebt.replay import ReplayBuffer
from ebt.thinking import Thinker, Thought

PAD_ID = 0  # the reference's pad = eos = 0; with the byte tokenizer 0 is the NUL byte, absent from text


@dataclass
class LMOutput:
    loss: Tensor
    """Training objective (mean CE over steps for S1, final-step CE for S2)."""
    final_ce: Tensor
    """Cross-entropy of the final prediction (mean over non-pad targets)."""
    tokens: int
    """Number of non-pad targets."""
    metrics: dict = field(default_factory=dict)
    thought: Optional[Thought] = None


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean CE over non-pad targets; logits (B, L, V), targets (B, L)."""
    return F.cross_entropy(upcast(logits).flatten(0, 1), targets.flatten(), ignore_index=PAD_ID)


def adamw_groups(module: nn.Module, optim: OptimConfig, thinker: Optional[Thinker] = None,
                 alpha_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups: decayed matrices, undecayed vectors, and a learnable step size alpha with its own learning-rate
    multiplier, no weight decay and its own cosine floor (the reference shares the other groups' floor)."""
    alpha = thinker.alpha if thinker is not None else None
    decay, no_decay = decay_groups(module, exclude=(alpha,) if alpha is not None else ())
    groups = [{"params": decay, "weight_decay": optim.weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    if alpha is not None and alpha.requires_grad:
        groups.append({"params": [alpha], "weight_decay": 0.0, "name": "alpha", "lr_mult": alpha_lr_mult,
                       "min_lr_ratio": optim.alpha_min_lr_ratio})
    return groups


def decay_groups(module: nn.Module, exclude: tuple = ()) -> tuple[list, list]:
    """Split parameters into weight-decayed matrices and non-decayed vectors (norms, biases, scalars)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad or any(p is e for e in exclude):
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return decay, no_decay


class TextEBT(nn.Module):
    """Autoregressive energy-based transformer for text."""

    kind = "ebt"

    def __init__(self, model: ModelConfig, think: ThinkConfig):
        super().__init__()
        self.cfg, self.think_cfg = model, think
        self.energy = AREnergyModel(model, num_landscapes=think.steps)
        self.thinker = Thinker(think)
        # System 2 replay buffer: a plain attribute, so it is neither a parameter nor in checkpoints (a resumed
        # run refills it within replay_size / batch_size steps)
        self.replay = (ReplayBuffer(think.replay_size, think.replay_dtype, think.replay_topk)
                       if think.replay_size else None)

    def context_energy(self, context: Tensor) -> ContextEnergy:
        """E(candidates, step) for contexts (B, L); a hook so benchmarks can swap in other formulations."""
        return ContextEnergy(self.energy, context)

    def initial_logits(self, batch: int, length: int, device=None, generator=None) -> Tensor:
        """z0 ~ N(0, init_std^2), shape (B, L, V)."""
        shape = (batch, length, self.cfg.vocab_size)
        # without a generator: ebt.noise draws per sample inside noise.per_sample (world-size-invariant training)
        z = noise.randn(shape, device) if generator is None else torch.randn(shape, device=device, generator=generator)
        return z if self.think_cfg.init_std == 1.0 else z * self.think_cfg.init_std  # a (B, L, V) pass saved

    def forward(self, input_ids: Tensor, z0: Optional[Tensor] = None, training: Optional[bool] = None,
                randomize: Optional[bool] = None) -> LMOutput:
        """Loss of one batch of windows (B, L+1). training=None follows self.training.

        In training the descent keeps the second-order graph; otherwise no graph is built at all. randomize
        (default: = training) turns on the training randomisation of ThinkConfig (random steps / alpha, Langevin
        noise) and, when z0 is not given, the replay buffer: n = replay_frac * B stored windows are appended
        after the B fresh rows and restart from their stored logits; the fresh rows' final logits are pushed.
        """
        training = self.training if training is None else training
        randomize = training if randomize is None else randomize
        fresh = input_ids.shape[0]
        replay = self.replay if (training and randomize and z0 is None) else None
        own_start = z0 is None     # our own scratch: the descent may free it after the first step
        if z0 is None:
            z0 = self.initial_logits(fresh, input_ids.shape[1] - 1, input_ids.device)   # (B, L, V)
        replayed = replay.sample(int(fresh * self.think_cfg.replay_frac), input_ids.shape[1]) if replay else None
        if replayed is not None:                                                         # B -> B + n rows
            ids_r, z_r = replayed
            input_ids = torch.cat([input_ids, ids_r.to(input_ids.device)])
            z0 = torch.cat([z0, z_r.to(z0)])
        x, y = input_ids[:, :-1], input_ids[:, 1:]
        energy, hook, stepwise = self.context_energy(x), {}, None
        if training and torch.is_grad_enabled() and StepwiseGradients.applies(self, self.think_cfg):
            stepwise = StepwiseGradients(self, self.energy, x, y, PAD_ID)   # frees each step's graph after it
            energy, hook = stepwise.energy, {"on_step": stepwise.on_step, "keep_all": self.think_cfg.keep_logits,
                                             "release_start": own_start}
        with torch.set_grad_enabled(training or torch.is_grad_enabled()):
            thought = self.thinker.train_descent(energy, z0, training=training, randomize=randomize, **hook)
            if stepwise is None:
                ces = [candidate_cross_entropy(z, y, PAD_ID, self.cfg.compile_kernels)  # keeps z, not log-softmax
                       for z in thought.logits]
                loss = ces[-1] if self.think_cfg.truncate else torch.stack(ces).mean()
            else:
                ces, loss = stepwise.ces, stepwise.loss()
        if replay is not None:
            replay.push(input_ids[:fresh], thought.final[:fresh])
        gap = (thought.energies[0].mean() - thought.energies[-1].mean()).item()
        metrics = {"initial_ce": ces[0].item(), "final_ce": ces[-1].item(), "energy_gap": gap,
                   "alpha": self.thinker.step_size().item(), "steps": len(thought.logits)}
        if replay is not None:
            metrics["replayed"] = 0 if replayed is None else replayed[0].shape[0]
        return LMOutput(loss, ces[-1].detach(), int((y != PAD_ID).sum()), metrics, thought)

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        return adamw_groups(self, optim, self.thinker, self.think_cfg.alpha_lr_mult)


class TextTransformer(nn.Module):
    """Transformer++ language model (the baseline)."""

    kind = "transformer"

    def __init__(self, model: ModelConfig):
        super().__init__()
        self.cfg = model
        self.net = TransformerPP(model)

    def forward(self, input_ids: Tensor, training: Optional[bool] = None) -> LMOutput:
        x, y = input_ids[:, :-1], input_ids[:, 1:]
        ce = cross_entropy(self.net(x), y)
        return LMOutput(ce, ce.detach(), int((y != PAD_ID).sum()), {"final_ce": ce.item()})

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        return adamw_groups(self, optim)


def build_lm(cfg: RunConfig) -> nn.Module:
    if cfg.model.kind == "ebt":
        return TextEBT(cfg.model, cfg.think)
    return TextTransformer(cfg.model)
