"""Pure networks for image denoising: the bidirectional EBT energy function and the DiT noise predictor.

Both are DiT-style (docs/reference.md §8): conv patch embedding + fixed 2-D sin-cos positions, blocks with
LayerNorm (no affine) -> adaLN modulation -> attention / GELU-tanh MLP -> gate, and an adaLN final layer.
* `EnergyNet`: the condition is one learned constant vector (the reference has no time conditioning); the final
  layer gives one scalar per patch, averaged into one energy per image.
* `DiTNet`: the condition is a sinusoidal timestep embedding; the final layer gives noise (and optionally
  variance) per pixel.
No optimisation loops here: the descent lives in `ebt.thinking`, the sampler in `ebt.images.diffusion`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebt.images.config import ImageModelConfig


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, N = (H/p)(W/p), p*p*C), patches in row-major order, pixels (py, px, c) in each."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)              # (B, C, gh, p, gw, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Tensor, p: int, c: int, h: int, w: int) -> Tensor:
    """Inverse of `patchify`: (B, N, p*p*C) -> (B, C, H, W)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, h // p, w // p, p, p, c)          # (B, gh, gw, p, p, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def sincos_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos position table (grid*grid, dim): half the channels encode the row, half the column."""
    def one_axis(pos: Tensor, d: int) -> Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d // 2))
        ang = pos.double()[:, None] * omega[None]           # (M, d/2)
        return torch.cat([ang.sin(), ang.cos()], dim=1)     # (M, d)

    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([one_axis(ys.flatten(), dim // 2), one_axis(xs.flatten(), dim // 2)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x (B, N, D) scaled and shifted per sample by (B, D) vectors."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Bidirectional multi-head attention written with matmul + softmax, so it supports double backward
    (PyTorch's fused SDPA kernels do not; EBT training differentiates the energy's input gradient)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B,H,N,hd)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, N, N)
        out = att.softmax(-1) @ v                                           # (B, H, N, hd)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """DiT block: LN -> modulate -> attention -> gate; LN -> modulate -> MLP -> gate (adaLN-Zero)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)          # 6 x (B, D)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


class Trunk(nn.Module):
    """Patch embedding + positions + blocks + adaLN final layer with `out_dim` outputs per patch."""

    def __init__(self, cfg: ImageModelConfig, out_dim: int, out_bias: bool):
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch
        self.embed = nn.Conv2d(cfg.channels, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.register_buffer("pos", sincos_2d(cfg.dim, self.grid)[None], persistent=False)  # (1, N, D)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
        self.head = nn.Linear(cfg.dim, out_dim, bias=out_bias)
        self._init()

    def _init(self) -> None:
        """DiT init: xavier Linears, zero biases; zero adaLN modulations (blocks start as identities) and head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.embed.bias)
        for ada in [b.ada for b in self.blocks] + [self.final_ada]:
            nn.init.zeros_(ada[-1].weight)
            nn.init.zeros_(ada[-1].bias)
        nn.init.zeros_(self.head.weight)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x (B, C, H, W), condition c (B, D) -> per-patch outputs (B, N, out_dim)."""
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos            # (B, N, D)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)                  # 2 x (B, D)
        return self.head(modulate(self.final_norm(h), shift, scale))       # (B, N, out_dim)


class EnergyNet(nn.Module):
    """Bidirectional EBT energy E(x) -> (B,): mean over patches of a per-patch scalar.

    The head has no bias: a constant shift of the energy gets no gradient through the descent (docs/reference.md §9).
    """

    def __init__(self, cfg: ImageModelConfig):
        super().__init__()
        self.trunk = Trunk(cfg, out_dim=1, out_bias=False)
        # One learned condition shared by every sample and step (the reference's nn.Embedding(1, D)); shape (1, D).
        self.condition = nn.Parameter(torch.randn(1, cfg.dim))

    def forward(self, x: Tensor) -> Tensor:
        c = self.condition.expand(x.shape[0], -1)                          # (B, D)
        return self.trunk(x, c).squeeze(-1).mean(-1)                      # (B, N, 1) -> (B,)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of (fractional) timesteps -> MLP -> (B, D), as in DiT."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]                             # (B, half)
        emb = torch.cat([args.cos(), args.sin()], dim=-1)                  # (B, freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class DiTNet(nn.Module):
    """Timestep-conditioned DiT: (x_t (B, C, H, W), t (B,)) -> noise [and variance logits] (B, C or 2C, H, W)."""

    def __init__(self, cfg: ImageModelConfig):
        super().__init__()
        self.cfg = cfg
        self.out_channels = cfg.channels * (2 if cfg.learn_sigma else 1)
        self.trunk = Trunk(cfg, out_dim=cfg.patch * cfg.patch * self.out_channels, out_bias=True)
        self.t_embed = TimestepEmbedder(cfg.dim)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        tokens = self.trunk(x, self.t_embed(t))                           # (B, N, p*p*C_out)
        return unpatchify(tokens, self.cfg.patch, self.out_channels, h, w)

