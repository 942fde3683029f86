"""Typed configuration of image denoising runs (bidirectional EBT or DiT baseline) and the two tiny presets.

`ImageRunConfig` = model / think / diffusion / optim / train / data / dist. It reuses the text run's `ThinkConfig`,
`OptimConfig` and `TrainConfig`, so the generic trainer, YAML files and `--section.key=value` overrides work
unchanged. The top-level `task = "denoise"` names the registered task (`ebt.images.task`) that trains and loads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ebt.config import DistConfig, OptimConfig, ThinkConfig, TrainConfig, check, check_at_least_one

MODEL_KINDS = ("ebt", "dit")
EMBEDDED = ("photos", "digits")


def check_noise_level(level: float, what: str = "noise level") -> float:
    """A noise level is a fraction of the diffusion schedule, strictly between 0 and 1."""
    check(0.0 < level < 1.0, f"{what} {level} is outside (0, 1): use e.g. 0.1 (training) or 0.2 (harder)")
    return level


@dataclass(kw_only=True)
class ImageModelConfig:
    kind: str = "ebt"
    """`ebt` (bidirectional energy-based transformer) or `dit` (Diffusion Transformer baseline)."""
    image_size: int = 0
    """Side of the square images; 0 = taken from the data when training starts (then stored in the checkpoint)."""
    channels: int = 0
    """Image channels (1 or 3); 0 = taken from the data."""
    patch: int = 4
    """Patch side; must divide image_size."""
    dim: int = 64
    """Model width D."""
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 1.0
    """MLP hidden width = mlp_ratio * dim (the reference's denoisers use 1, not DiT's 4)."""
    learn_sigma: bool = True
    """DiT only: also predict the variance (2C output channels, trained with the VB term) as the reference does."""

    def __post_init__(self) -> None:
        check(self.kind in MODEL_KINDS, f"model.kind={self.kind!r} is not an image model: use ebt or dit")
        check_at_least_one("model", self, ("patch", "dim", "layers", "heads"))
        check(self.image_size >= 0 and self.channels in (0, 1, 3),
               "model.image_size must be >= 0 and model.channels 0 (from the data), 1 or 3")
        check(self.dim % self.heads == 0, f"model.heads={self.heads} does not divide model.dim={self.dim}")
        check(self.dim % 4 == 0, f"model.dim={self.dim} must be a multiple of 4 (2-D sin-cos position embedding)")
        check(self.mlp_ratio > 0, f"model.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.image_size:
            check_divisible(self.image_size, self.patch)


def check_divisible(size: int, patch: int) -> None:
    check(size % patch == 0, f"image size {size} is not divisible by the patch size {patch}: "
                              f"set --data.image_size to a multiple of {patch} or pick another --model.patch")


@dataclass(kw_only=True)
class DiffusionConfig:
    """The DDPM noise schedule shared by both models (the reference's 1000-step linear schedule)."""
    schedule_steps: int = 1000
    """T; a noise level s means timestep t = int(s*T) - 1."""
    beta_start: float = 1e-4
    beta_end: float = 0.02
    train_level: float = 0.1
    """EBT: trained at exactly t = int(level*T) - 1 (t=99); DiT: t ~ U[0, level*T) (t < 100)."""
    random_level: bool = False
    """EBT only: draw t ~ U[0, level*T) instead of the fixed level (the reference's unused option)."""
    clip_denoised: bool = True
    """DiT DDIM: clip each predicted clean image to [-1, 1]."""

    def __post_init__(self) -> None:
        check(self.schedule_steps >= 2, f"diffusion.schedule_steps must be >= 2, got {self.schedule_steps}")
        check(0 < self.beta_start < self.beta_end < 1, "need 0 < diffusion.beta_start < diffusion.beta_end < 1")
        check_noise_level(self.train_level, "diffusion.train_level")
        check(int(self.train_level * self.schedule_steps) >= 1,
               "diffusion.train_level * schedule_steps must be >= 1 (at least one timestep)")


@dataclass(kw_only=True)
class ImageDataConfig:
    path: Optional[str] = None
    """A folder of PNG/JPEG images, one image file, or an array file (.npy/.npz/.pt); None = `embedded`."""
    embedded: str = "photos"
    """`photos` (crops of scikit-learn's two sample photographs) or `digits` (scikit-learn's 8x8 digits)."""
    image_size: int = 0
    """Resize (shorter side) and centre-crop every image to this side; for `photos` the crop side. 0 = as stored."""
    channels: int = 0
    """Convert every image to 1 or 3 channels; 0 = as stored (mixed channel counts are then an error)."""
    photo_scale: float = 0.5
    """`photos`: downscale the 427x640 photographs by this factor before cropping (more structure per crop)."""
    crop_stride: int = 4
    """`photos`: stride between training crops (test crops never overlap each other or the training region)."""
    val_fraction: float = 0.25
    """Held out for evaluation: the bottom rows of each photo, or the last images of a set."""
    max_images: int = 0
    """Use at most this many images (0: all)."""

    def __post_init__(self) -> None:
        check(self.embedded in EMBEDDED, f"data.embedded={self.embedded!r}: use photos or digits")
        check(self.image_size >= 0, f"data.image_size must be >= 0, got {self.image_size}")
        check(self.channels in (0, 1, 3), f"data.channels must be 0 (as stored), 1 or 3, got {self.channels}")
        check(0 < self.photo_scale <= 1, f"data.photo_scale must be in (0, 1], got {self.photo_scale}")
        check(self.crop_stride >= 1, f"data.crop_stride must be >= 1, got {self.crop_stride}")
        check(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        check(self.max_images >= 0, f"data.max_images must be >= 0, got {self.max_images}")


@dataclass(kw_only=True)
class ImageRunConfig:
    FROM_DATA: ClassVar[tuple[str, ...]] = ("model.image_size", "model.channels")
    """Settings where 0 means "taken from the data when training starts" (a saved run holds the resolved values)."""
    task: str = "denoise"
    """The registered task of image runs (do not change)."""
    model: ImageModelConfig = field(default_factory=ImageModelConfig)
    think: ThinkConfig = field(default_factory=lambda: ThinkConfig(landscapes=1, alpha=3000.0, alpha_lr_mult=9000.0))
    """EBT descent (used by kind=ebt only); the reference's S1 recipe: one step, learnable alpha."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        check(self.task == "denoise", f"task={self.task!r}: image runs have task=denoise")
        text_only = self.think.text_only_settings()
        check(not text_only, f"think.{', think.'.join(text_only)}: text models only; remove it for images")


# ---- presets (registered in ebt.presets) ------------------------------------------------------------------------
def denoise_tiny() -> ImageRunConfig:
    """Bidirectional EBT denoiser on 32x32 crops of the sample photos (S1: 1 step, learnable alpha), CPU minutes.

    alpha starts far below the reference's 3000: with 64 patches and width 96 the energy gradient per pixel is
    much larger than at 128x128 / width 1536. alpha's LR multiplier keeps the reference's alpha/lr ratio spirit."""
    return ImageRunConfig(
        model=ImageModelConfig(kind="ebt", patch=4, dim=96, layers=3, heads=4, mlp_ratio=1.0),
        think=ThinkConfig(landscapes=1, alpha=100.0, learn_alpha=True, alpha_lr_mult=1000.0),
        optim=OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=50, grad_clip=1.0),
        train=TrainConfig(steps=800, batch_size=32, eval_every=200, eval_batches=4, log_every=20,
                          out_dir="runs/denoise-tiny"),
        data=ImageDataConfig(embedded="photos", image_size=32),
    )


def dit_tiny() -> ImageRunConfig:
    """DiT baseline (timestep-conditioned, predicts the noise, learned variance) on the same crops, t < 100."""
    return ImageRunConfig(
        model=ImageModelConfig(kind="dit", patch=4, dim=96, layers=3, heads=4, mlp_ratio=1.0, learn_sigma=True),
        optim=OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=50, grad_clip=1.0),
        train=TrainConfig(steps=800, batch_size=32, eval_every=200, eval_batches=4, log_every=20,
                          out_dir="runs/dit-tiny"),
        data=ImageDataConfig(embedded="photos", image_size=32),
    )
