"""The DDPM noise schedule, the DiT training objective and the DDIM sampler, as one small scheduler object.

Linear beta schedule over T steps (the reference's 1000-step schedule from 1e-4 to 0.02). A noise level s
(a fraction of the schedule) is timestep t = int(s*T) - 1: 0.1 -> t=99 (sqrt(abar)=0.947, sqrt(1-abar)=0.321),
0.2 -> t=199 (0.812, 0.584). Noising follows DDPM, x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps, for both models.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ebt import noise
from ebt.images.config import DiffusionConfig, check_noise_level

EpsFn = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, C, H, W), t (B,) long) -> predicted noise (B, C, H, W)


@dataclass
class SampleOutput:
    sample: Tensor
    """The denoised images (B, C, H, W) in model space [-1, 1]."""
    nfe: int
    """Network forward passes used."""
    chains: list
    """The final image of each chain (one per recursion), for PSNR-vs-NFE curves."""


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2) ** 2 * (-logvar2).exp())


def discretized_gaussian_nll(x0: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """-log P(x0) for 8-bit data in [-1, 1] under a Gaussian integrated over each pixel's bin (width 2/255)."""
    inv_std = (-log_scale).exp()
    upper = torch.special.ndtr(inv_std * (x0 - mean + 1 / 255))
    lower = torch.special.ndtr(inv_std * (x0 - mean - 1 / 255))
    # The outermost bins extend to +-infinity, so their mass is the whole tail.
    prob = torch.where(x0 < -0.999, upper, torch.where(x0 > 0.999, 1 - lower, upper - lower))
    return -prob.clamp_min(1e-12).log()


class DDPMSchedule:
    """Schedule tables (float64, gathered per sample) plus noising, the DiT loss and DDIM sampling."""

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg
        self.T = cfg.schedule_steps
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, self.T, dtype=torch.float64)
        self.betas = betas
        self.abar = torch.cumprod(1 - betas, 0)                                     # (T,)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - self.abar)
        # Posterior variance is 0 at t=0; use the t=1 value there so its log stays finite (as DDPM/ADM do).
        self.post_logvar = torch.cat([post_var[1:2], post_var[1:]]).log()
        self.post_coef_x0 = betas * abar_prev.sqrt() / (1 - self.abar)
        self.post_coef_xt = (1 - abar_prev) * (1 - betas).sqrt() / (1 - self.abar)
        self.sqrt_abar, self.sqrt_1m_abar = self.abar.sqrt(), (1 - self.abar).sqrt()
        self.log_betas = betas.log()
        self._on_device: dict = {}   # (table id, device) -> the table there: one copy per device, not per call

    # ---- noise levels -----------------------------------------------------------------------------------------
    def t_for_level(self, level: float) -> int:
        """Noise level s in (0, 1) -> timestep int(s*T) - 1 (the reference's test-time rule)."""
        check_noise_level(level)
        return max(0, int(level * self.T) - 1)

    def train_timesteps(self, batch: int, fixed: bool, device=None) -> Tensor:
        """EBT: fixed t = int(level*T) - 1; DiT (fixed=False): t ~ U[0, level*T) — the low-noise part only."""
        top = int(self.cfg.train_level * self.T)
        if fixed:
            return torch.full((batch,), top - 1, dtype=torch.long, device=device)
        u = noise.rand((batch,), device=device)  # per sample inside ebt.noise.per_sample (world-size invariant)
        return (u * top).long().clamp_(max=top - 1)

    def _at(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """table[t] as a (B, 1, 1, 1) tensor of like's dtype and device."""
        key = (id(table), like.device)
        if key not in self._on_device:
            self._on_device[key] = table.to(like.device)
        return self._on_device[key][t].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def signal_noise(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        return self._at(self.sqrt_abar, t, like), self._at(self.sqrt_1m_abar, t, like)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0, noise (B, C, H, W), t (B,)."""
        a, s = self.signal_noise(t, x0)
        return a * x0 + s * noise

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        a, s = self.signal_noise(t, x_t)
        return (x_t - s * eps) / a

    def predict_eps(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        a, s = self.signal_noise(t, x_t)
        return (x_t - a * x0) / s

    # ---- DiT training objective (ADM's MSE + learned-range VB) -------------------------------------------------
    def dit_loss(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, dict]:
        """out (B, C or 2C, H, W): predicted noise [+ variance interpolation values in [-1, 1]]."""
        c = x0.shape[1]
        eps = out[:, :c]
        mse = ((noise - eps) ** 2).mean(dim=(1, 2, 3))                              # (B,)
        if out.shape[1] == c:
            return mse.mean(), {"mse_eps": mse.mean().item()}
        # VB term trains only the variance: the mean comes from the detached noise prediction (improved DDPM).
        v = out[:, c:]
        min_log, max_log = self._at(self.post_logvar, t, x0), self._at(self.log_betas, t, x0)
        model_logvar = (v + 1) / 2 * max_log + (1 - v) / 2 * min_log
        pred_x0 = self.predict_x0(x_t, t, eps.detach())
        coef_x0, coef_xt = self._at(self.post_coef_x0, t, x0), self._at(self.post_coef_xt, t, x0)
        model_mean = coef_x0 * pred_x0 + coef_xt * x_t
        true_mean = coef_x0 * x0 + coef_xt * x_t
        kl = normal_kl(true_mean, min_log, model_mean, model_logvar).mean(dim=(1, 2, 3)) / math.log(2)
        nll = discretized_gaussian_nll(x0, model_mean, 0.5 * model_logvar).mean(dim=(1, 2, 3)) / math.log(2)
        vb = torch.where(t == 0, nll, kl)                                           # bits per dim, (B,)
        return (mse + vb).mean(), {"mse_eps": mse.mean().item(), "vb": vb.mean().item()}

    # ---- DDIM (eta = 0) ---------------------------------------------------------------------------------------
    def timesteps(self, t_start: int, steps: Optional[int] = None) -> list[int]:
        """Descending timesteps from t_start to 0: all t_start+1 of them, or `steps` evenly spaced ones."""
        if steps is None or steps >= t_start + 1:
            return list(range(t_start, -1, -1))
        seq = torch.linspace(t_start, 0, max(1, steps)).round().long().tolist()
        return sorted(set(seq), reverse=True)

    @torch.no_grad()
    def ddim(self, eps_fn: EpsFn, x_t: Tensor, t_start: int, steps: Optional[int] = None,
             recurse: int = 0) -> SampleOutput:
        """Deterministic DDIM from timestep t_start to 0; `recurse` re-runs the whole chain on its own output
        (the reference's infer_recurse_diffusion_n_times), each chain starting at t_start again."""
        clip = self.cfg.clip_denoised
        seq = self.timesteps(t_start, steps)
        x, nfe, chains = x_t, 0, []
        for _ in range(recurse + 1):
            for i, t in enumerate(seq):
                tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
                eps = eps_fn(x, tt)                                                # (B, C, H, W)
                nfe += 1
                x0 = self.predict_x0(x, tt, eps)
                if clip:  # clip the clean estimate, then re-derive the noise consistent with it (as ADM does)
                    x0 = x0.clamp(-1, 1)
                    eps = self.predict_eps(x, tt, x0)
                if i + 1 < len(seq):
                    tp = torch.full_like(tt, seq[i + 1])
                    x = self.q_sample(x0, tp, eps)  # x_{t'} = sqrt(abar_t') x0 + sqrt(1 - abar_t') eps
                else:
                    x = x0
            chains.append(x)
        return SampleOutput(sample=x, nfe=nfe, chains=chains)
