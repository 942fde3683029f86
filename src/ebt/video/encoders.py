"""Frame encoders behind one interface: frames (N, C, H, W) in [-1, 1] <-> latents (N, latent_dim), frozen.

* `PixelEncoder` (`pixels`): p x p patches stacked as channels (pixel_unshuffle), nothing learnt; exactly invertible.
* `ConvAutoencoder` (`autoencoder`): a small convolutional autoencoder trained by `ebt train --preset frame-ae-tiny`
  (the `frame-ae` task), then frozen; its weights travel inside every video checkpoint made with it.
* `SDVAEEncoder` (`sd-vae`): a local diffusers AutoencoderKL folder (the paper's Stable Diffusion VAE), latent mean
  times the VAE's scaling factor; needs `pip install diffusers`, never downloads. Its weights are read from the
  folder whenever a checkpoint loads, and are not copied into checkpoints.

Every encoder divides its latents by `scale` (a buffer saved with the model): 1 for pixels, the latents' standard
deviation on training frames for the learnt encoders, so that candidates drawn from N(0, 1) start at the data's scale.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt.errors import UserError
from ebt.media import to_channels
from ebt.video.config import AutoencoderConfig


class FrameEncoder(nn.Module):
    """The interface. Subclasses set `latent_shape` (c, h, w) and implement `_encode` / `_decode`."""

    latent_shape: tuple[int, int, int]

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    @property
    def latent_dim(self) -> int:
        c, h, w = self.latent_shape
        return c * h * w

    def freeze(self) -> "FrameEncoder":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FrameEncoder":
        return super().train(False)   # frozen: never in training mode (no dropout or batch statistics)

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, latent_dim)."""
        return self._encode(frames).flatten(1) / self.scale

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """(N, latent_dim) -> frames (N, C, H, W), clamped to [-1, 1]."""
        return self._decode((latents * self.scale).view(-1, *self.latent_shape)).clamp(-1, 1)

    @torch.no_grad()
    def calibrate(self, frames: Tensor, batch: int = 64) -> None:
        """Set `scale` to the standard deviation of the unscaled latents of `frames` (N, C, H, W)."""
        latents = torch.cat([self._encode(frames[i:i + batch]) for i in range(0, len(frames), batch)])
        self.scale.fill_(float(latents.std().clamp(min=1e-6)))


class PixelEncoder(FrameEncoder):
    def __init__(self, channels: int, size: int, patch: int):
        super().__init__()
        if size % patch:
            raise UserError(f"frames of side {size} are not divisible by video.patch={patch}: pick another patch or "
                            "--data.image_size")
        self.patch = patch
        self.latent_shape = (channels * patch * patch, size // patch, size // patch)

    def _encode(self, frames: Tensor) -> Tensor:
        return F.pixel_unshuffle(frames, self.patch)

    def _decode(self, latents: Tensor) -> Tensor:
        return F.pixel_shuffle(latents, self.patch)


class ConvAutoencoder(FrameEncoder):
    def __init__(self, cfg: AutoencoderConfig, channels: int, size: int):
        super().__init__()
        self.cfg, self.channels = cfg, channels
        f = 2 ** cfg.downsample
        if size % f:
            raise UserError(f"frames of side {size} are not divisible by 2^ae.downsample={f}")
        widths = [cfg.width * 2 ** i for i in range(cfg.downsample + 1)]
        down: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1), nn.SiLU()]
        for a, b in zip(widths, widths[1:]):
            down += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(b, b, 3, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(*down, nn.Conv2d(widths[-1], cfg.latent_channels, 3, padding=1))
        up: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, widths[-1], 3, padding=1), nn.SiLU()]
        for a, b in zip(widths[::-1], widths[-2::-1]):
            up += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(b, b, 3, padding=1),
                   nn.SiLU()]
        self.decoder = nn.Sequential(*up, nn.Conv2d(widths[0], channels, 3, padding=1))
        self.latent_shape = (cfg.latent_channels, size // f, size // f)

    def _encode(self, frames: Tensor) -> Tensor:
        return self.encoder(frames)

    def _decode(self, latents: Tensor) -> Tensor:
        # linear output (`decode` clamps to [-1, 1]): a tanh here saturates on the digits' black background, where
        # its gradient vanishes and training stalls at the all-background image
        return self.decoder(latents)

    def reconstruct(self, frames: Tensor) -> Tensor:
        """Differentiable encode + decode (training the autoencoder)."""
        return self._decode(self._encode(frames))


class SDVAEEncoder(FrameEncoder):
    def __init__(self, folder: str, channels: int, size: int):
        super().__init__()
        if importlib.util.find_spec("diffusers") is None:
            raise UserError("video.encoder=sd-vae needs diffusers: pip install diffusers (the VAE itself comes from "
                            "the local folder video.encoder_path; nothing is downloaded)")
        from diffusers import AutoencoderKL

        if not (Path(folder) / "config.json").is_file():
            raise UserError(f"video.encoder_path={folder!r} is not a diffusers AutoencoderKL folder (no config.json): "
                            "save one with AutoencoderKL.save_pretrained(FOLDER)")
        try:
            vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
            vae = vae.requires_grad_(False).eval()
        except Exception as exc:   # diffusers raises many types for foreign or damaged folders
            raise UserError(f"cannot load the VAE in {folder!r} ({type(exc).__name__}: "
                            f"{(str(exc).splitlines() or [''])[0][:160]})") from None
        # held in a list, not as a submodule: its weights stay in the folder instead of in every checkpoint (335 MB
        # for the Stable Diffusion VAE); _apply still moves and casts it with the model
        self._vae = [vae]
        self.channels, self.factor = channels, float(self.vae.config.scaling_factor)
        with torch.no_grad():
            probe = self.vae.encode(torch.zeros(1, 3, size, size)).latent_dist.mean
            back = self.vae.decode(probe).sample.shape[-2:]
        if tuple(back) != (size, size):
            raise UserError(f"the VAE in {folder!r} decodes {size}x{size} frames to {back[0]}x{back[1]}: choose a "
                            "--data.image_size it divides evenly (a multiple of its downsampling factor)")
        self.latent_shape = tuple(probe.shape[1:])

    @property
    def vae(self):
        return self._vae[0]

    def _apply(self, fn, recurse: bool = True):
        self.vae._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def _encode(self, frames: Tensor) -> Tensor:
        rgb = to_channels(frames, 3)   # the VAE reads RGB
        return self.vae.encode(rgb).latent_dist.mean * self.factor

    def _decode(self, latents: Tensor) -> Tensor:
        out = self.vae.decode(latents / self.factor).sample
        return to_channels((out.clamp(-1, 1) + 1) / 2, self.channels) * 2 - 1
