"""Language models: energy function + thinking -> loss (text EBT), and the Transformer++ baseline.

Both share one interface, so the trainer, evaluation and generation never ask which model they hold:
    forward(input_ids (B, L+1))           -> LMOutput(loss, ...)    training objective; targets input_ids[:, 1:]
    param_groups(optim_cfg)               -> AdamW parameter groups
    predict(contexts (B, S), options)     -> Prediction: next-token logits (B, S, V) for every position
    start_cache(window) / extend_cache(cache, tokens)               the KV cache of the context
    next_logits(window, cache, options)   -> Prediction: logits (B, V) of the token after the window
    decoder(window, options, ...)         -> generation's decoder: first() / advance(token) -> Prediction
    target_energy(contexts, targets)      -> energies (B, S) of given next tokens (None: no energy)
Thinking options (`ebt.thinking.ThinkOptions`) are refused by the Transformer++ with a clear message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt import noise
from ebt.config import ModelConfig, OptimConfig, RunConfig, ThinkConfig
from ebt.errors import UserError
from ebt.models import explicit
from ebt.models.ar_ebt import AREnergyModel, ContextEnergy
from ebt.models.backbone import Observed
from ebt.models.layers import frozen_weights
from ebt.models.transformer_pp import TransformerPP
from ebt.ops.common import upcast
from ebt.ops.vocab import candidate_cross_entropy
from ebt.text.decoding import CacheDecoder, EBTStaticDecoder, TransformerStaticDecoder, plain_options
from ebt.text.inference import Prediction, build_cache, extend_cache, think
from ebt.text.replay import ReplayBuffer
from ebt.text.stepwise import StepwiseGradients
from ebt.text.verifier import verifier_loss
from ebt.thinking import Thinker, ThinkOptions, Thought
from ebt.training.optim import adamw_groups
from ebt.training.pretrained import HubMixin

PAD_ID = 0  # the reference's pad = eos = 0; with the byte tokenizer 0 is the NUL byte, absent from text


@dataclass
class LMOutput:
    loss: Tensor
    """Training objective: mean CE over steps (S1) or final-step CE (S2), plus think.verify_weight x the verifier
    loss when that is on (`metrics["verify_loss"]`; `final_ce` stays the cross-entropy alone)."""
    final_ce: Tensor
    """Cross-entropy of the final prediction (mean over non-pad targets)."""
    tokens: int
    """Number of non-pad targets."""
    metrics: dict = field(default_factory=dict)
    thought: Optional[Thought] = None


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean CE over non-pad targets; logits (B, L, V), targets (B, L)."""
    return F.cross_entropy(upcast(logits).flatten(0, 1), targets.flatten(), ignore_index=PAD_ID)


class TextEBT(HubMixin, nn.Module):
    """Autoregressive energy-based transformer for text."""

    kind = "ebt"
    can_think = True

    def __init__(self, model: ModelConfig, think: ThinkConfig):
        super().__init__()
        self.cfg, self.think_cfg = model, think
        self.energy = AREnergyModel(model, num_landscapes=think.landscapes)
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
                       for z in thought.candidates]
                loss = ces[-1] if self.think_cfg.truncate else torch.stack(ces).mean()
            else:
                ces, loss = stepwise.ces, stepwise.loss()
        verify = None
        if training and randomize and self.think_cfg.verify_weight > 0:   # the energy learns to rank candidates
            with torch.enable_grad():
                verify = verifier_loss(energy if stepwise is None else self.context_energy(x), thought.final, y,
                                       self.think_cfg.verify_scales, self.think_cfg.verify_temperature,
                                       thought.schedule[-1], PAD_ID)
            loss = loss + self.think_cfg.verify_weight * verify[0]
        if replay is not None:
            replay.push(input_ids[:fresh], thought.final[:fresh])
        gap = (thought.energies[0].mean() - thought.energies[-1].mean()).item()
        metrics = {"initial_ce": ces[0].item(), "final_ce": ces[-1].item(), "energy_gap": gap,
                   "alpha": self.thinker.step_size().item(), "steps": len(thought.candidates),
                   **({f"ce_step{k + 1}": c.item() for k, c in enumerate(ces)}   # the loss after each step, when
                      if self.think_cfg.rand_steps == 0 else {})}                   # every batch has the same steps
        if verify is not None:
            metrics["verify_loss"], metrics["verify_hit"] = verify[0].item(), verify[1].item()
        if replay is not None:
            metrics["replayed"] = 0 if replayed is None else replayed[0].shape[0]
        return LMOutput(loss, ces[-1].detach(), int((y != PAD_ID).sum()), metrics, thought)

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        return adamw_groups(self, optim, self.thinker.alpha, self.think_cfg.alpha_lr_mult)

    # ---- inference -------------------------------------------------------------------------------------------
    @staticmethod
    def check_options(options: Optional[ThinkOptions]) -> None:
        """Every thinking option applies to an EBT."""

    def predict(self, input_ids: Tensor, options: Optional[ThinkOptions] = None,
                generator: Optional[torch.Generator] = None) -> Prediction:
        """Logits (B, S, V) for the token after every position of contexts (B, S), by thinking (`options`)."""
        res = think(self, input_ids, options, generator=generator, final_energy=False)
        return Prediction(res.logits, res.nfe, res)

    @torch.no_grad()
    def target_energy(self, input_ids: Tensor, targets: Tensor) -> Tensor:
        """Energy (B, S) of each given next token `targets` (B, S), as a one-hot candidate after contexts (B, S), on
        the last landscape: the model's verdict on a given continuation (lower = more compatible). Multiple-choice
        answers are scored by it."""
        k = self.think_cfg.landscapes - 1
        onehot_embedded = self.energy.candidate_matrix()[targets]                 # (B, S, D) = one_hot(y) @ M
        return self.energy.energy_of_embedding(self.context_energy(input_ids).observed(k), onehot_embedded, k)

    def start_cache(self, window: Tensor) -> dict[Optional[int], Observed]:
        """KV cache of the context window (B, S), with room for the whole context (+ the step token) so that
        appending never copies it; per step index when the conditioning lets the context see the step."""
        return {k: o.with_capacity(self.cfg.context + 1) for k, o in build_cache(self, window).items()}

    def extend_cache(self, cache: dict, tokens: Tensor) -> dict:
        return extend_cache(self, cache, tokens)

    def decoder(self, window: Tensor, options: Optional[ThinkOptions] = None,
                generator: Optional[torch.Generator] = None, final_energy: bool = False):
        """Generation's decoder for contexts `window` (B, S) (`text/decoding.py`): static buffers and one
        fixed-shape function per token where the explicit passes run and the options are plain, else the cache."""
        if explicit.enabled_for(window) and not torch.is_grad_enabled() and plain_options(options, final_energy):
            return EBTStaticDecoder(self, window, options, generator)
        return CacheDecoder(self, window, options, generator, final_energy)

    def next_logits(self, window: Tensor, cache: Optional[dict] = None, options: Optional[ThinkOptions] = None,
                    generator: Optional[torch.Generator] = None, final_energy: bool = False) -> Prediction:
        """Logits (B, V) of the token after `window` (B, S): only the last position's candidate is descended,
        over the cached context when `cache` is given. final_energy: also its final energy (one more pass)."""
        res = think(self, window, options, obs=cache, start=window.shape[1] - 1, length=1, generator=generator,
                    final_energy=final_energy)
        return Prediction(res.logits[:, -1], res.nfe, res)


class TextTransformer(HubMixin, nn.Module):
    """Transformer++ language model (the baseline)."""

    kind = "transformer"
    can_think = False

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

    # ---- inference (the interface of TextEBT, without thinking) -----------------------------------------------
    @staticmethod
    def check_options(options: Optional[ThinkOptions]) -> None:
        """A Transformer++ cannot think: any thinking option is refused with one line."""
        if options is not None:
            raise UserError("thinking options (steps, samples, select, tol, langevin) need an EBT checkpoint; "
                            "this one is a Transformer++")

    def predict(self, input_ids: Tensor, options: Optional[ThinkOptions] = None,
                generator: Optional[torch.Generator] = None) -> Prediction:
        self.check_options(options)
        return Prediction(self.net(input_ids))

    @staticmethod
    def target_energy(input_ids: Tensor, targets: Tensor) -> None:
        """A Transformer++ has no energy."""
        return None

    def start_cache(self, window: Tensor) -> Observed:
        with frozen_weights():
            return self.net.observe(window).with_capacity(self.cfg.context)

    def extend_cache(self, cache: Observed, tokens: Tensor) -> Observed:
        with frozen_weights():
            return self.net.observe(tokens, past=cache)

    def decoder(self, window: Tensor, options: Optional[ThinkOptions] = None,
                generator: Optional[torch.Generator] = None, final_energy: bool = False):
        """Generation's decoder (`text/decoding.py`): static buffers where the explicit passes run, else the cache."""
        self.check_options(options)
        if explicit.enabled_for(window) and not torch.is_grad_enabled():
            return TransformerStaticDecoder(self, window)
        return CacheDecoder(self, window, options, generator, final_energy)

    def next_logits(self, window: Tensor, cache: Optional[Observed] = None, options: Optional[ThinkOptions] = None,
                    generator: Optional[torch.Generator] = None, final_energy: bool = False) -> Prediction:
        self.check_options(options)
        cache = cache if cache is not None else self.start_cache(window)
        return Prediction(self.net.head(cache.hidden[:, -1:])[:, -1])


def build_lm(cfg: RunConfig) -> nn.Module:
    if cfg.model.kind == "ebt":
        return TextEBT(cfg.model, cfg.think)
    return TextTransformer(cfg.model)
