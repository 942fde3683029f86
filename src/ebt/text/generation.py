"""Text generation for both models through their shared interface: `decoder(window, ...)` (`text/decoding.py`), whose
`first()` and `advance(token)` give each next token's logits, or `next_logits` without a cache.

For the EBT each new token costs only the candidate position's descent: the context's keys/values are cached
(per step index when the conditioning lets the context see the step) and extended by one token at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ebt.errors import UserError
from ebt.text.inference import ThinkResult
from ebt.thinking import ThinkOptions


@dataclass(kw_only=True)
class SampleOptions:
    max_new_tokens: int = 100
    temperature: float = 0.8
    """0 means greedy (argmax)."""
    top_p: float = 0.9
    seed: Optional[int] = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise UserError(f"max new tokens must be >= 0, got {self.max_new_tokens}")
        if not 0 <= self.temperature < float("inf"):
            raise UserError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top-p must be in (0, 1], got {self.top_p}")


def sample_next(logits: Tensor, temperature: float, top_p: float, generator=None) -> Tensor:
    """logits (B, V) -> token ids (B,), greedy when temperature == 0, else nucleus sampling."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = (logits.float() / temperature).softmax(-1)
    sorted_p, order = probs.sort(-1, descending=True)
    cum = sorted_p.cumsum(-1)
    sorted_p[(cum - sorted_p) > top_p] = 0.0  # keep the smallest prefix whose mass reaches top_p
    choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


@dataclass
class DecodeStep:
    token: Tensor
    """Chosen token ids (B,)."""
    logits: Tensor
    """Next-token logits (B, V)."""
    thought: Optional[ThinkResult] = None
    """The EBT's thinking for this position (energies, steps used, NFE); None for the Transformer++."""


@torch.no_grad()
def decode(model, prompt: Tensor, max_new: int, think_opts: Optional[ThinkOptions], use_cache: bool,
           pick, generator=None, final_energy: bool = False):
    """Yield a DecodeStep per new token; `pick` maps logits (B, V) to token ids (B,).

    use_cache: the model's decoder (`text/decoding.py`) keeps the context's KV cache and appends each new token
    (started afresh when the window slides); otherwise the context is recomputed for every token. final_energy:
    also report each token's final energy (one more forward pass per token).
    """
    ids, ctx, decoder, token = prompt, model.cfg.context, None, None
    for _ in range(max_new):
        if not use_cache:
            pred = model.next_logits(ids[:, -ctx:], None, think_opts, generator, final_energy)
        elif decoder is None:   # start on the last `ctx` tokens
            decoder = model.decoder(ids[:, -ctx:], think_opts, generator, final_energy)
            pred = decoder.first()
        else:
            pred = decoder.advance(token)
        token = pick(pred.logits)[:, None]                                         # (B, 1)
        yield DecodeStep(token[:, 0], pred.logits, pred.thought)
        ids = torch.cat([ids, token], dim=1)
        if ids.shape[1] > ctx:
            decoder = None   # the window slid: start again from the last `ctx` tokens


def generate(model, prompt: Tensor, opts: Optional[SampleOptions] = None,
             think_opts: Optional[ThinkOptions] = None) -> Tensor:
    """Continue prompt (B, P) by opts.max_new_tokens tokens; returns (B, P + new)."""
    opts = opts or SampleOptions()
    if prompt.shape[1] < 1:
        raise UserError("the prompt is empty: give at least one character")
    if prompt.shape[1] > model.cfg.context:
        raise UserError(f"the prompt has {prompt.shape[1]} tokens, more than the model's context "
                        f"{model.cfg.context}: shorten it")
    model.check_options(think_opts)
    model.eval()
    gen = torch.Generator(device=prompt.device)
    gen.manual_seed(opts.seed if opts.seed is not None else torch.seed() % 2**63)
    def pick(logits: Tensor) -> Tensor:
        return sample_next(logits, opts.temperature, opts.top_p, gen)

    new = [step.token for step in decode(model, prompt, opts.max_new_tokens, think_opts, opts.use_cache, pick, gen)]
    if not new:
        return prompt
    return torch.cat([prompt, torch.stack(new, dim=1)], dim=1)
