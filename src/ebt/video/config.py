"""Typed configuration of video runs and of the frame autoencoder, and their presets.

`VideoRunConfig` = model / think / video / ae / optim / train / data / dist: the text run's `ModelConfig` (its
`kind` is `ebt` or `transformer`, its `context` the number of input frames: clips are context + 1 frames),
`ThinkConfig`, `OptimConfig`, `TrainConfig` and `DistConfig`, plus `video` (the frame encoder and the candidates'
start), `ae` (the autoencoder's shape, copied from its run) and `data` (the clips). `FrameAERunConfig` trains the
small convolutional autoencoder that `video.encoder=autoencoder` uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ebt.config import (DistConfig, ModelConfig, OptimConfig, ThinkConfig, TrainConfig, check,
                        check_at_least_one)

ENCODERS = ("pixels", "autoencoder", "sd-vae")
STARTS = ("noise", "last")


@dataclass(kw_only=True)
class VideoDataConfig:
    path: Optional[str] = None
    """A video (GIF, MP4, ...), a folder of videos and/or frame folders (each folder of PNG/JPEG frames is one video),
    or an array file (.npy/.npz) of shape (N, F, H, W[, C]); None = the embedded moving digits."""
    image_size: int = 32
    """Resize (shorter side) and centre-crop every frame to this side; 0 = as stored (then all frames must match)."""
    channels: int = 1
    """Convert frames to 1 or 3 channels; 0 = as stored."""
    stride: int = 1
    """Take every `stride`-th frame of a video (the time between frames)."""
    hop: int = 0
    """Frames between the starts of consecutive clips of one video (0: clips do not overlap)."""
    val_fraction: float = 0.1
    """Held out for evaluation: the last videos of the set (or, for one video, its last clips)."""
    videos: int = 2000
    """Moving digits: number of training videos (the held-out set has videos // 10, from another seed)."""
    digits: int = 2
    """Moving digits: digits per video."""
    digit_size: int = 12
    """Moving digits: side of each digit on the canvas (scikit-learn's 8 x 8 digits, resized)."""
    speed: float = 2.0
    """Moving digits: largest speed in pixels per frame along each axis (each digit draws its own velocity)."""
    seed: int = 0
    """Moving digits: the generator's seed (the held-out set uses another stream)."""

    def __post_init__(self) -> None:
        check(self.image_size >= 0, f"data.image_size must be >= 0, got {self.image_size}")
        check(self.channels in (0, 1, 3), f"data.channels must be 0 (as stored), 1 or 3, got {self.channels}")
        check_at_least_one("data", self, ("stride", "videos", "digits", "digit_size"))
        check(self.hop >= 0, f"data.hop must be >= 0 (0: clips do not overlap), got {self.hop}")
        check(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        check(0 <= self.speed, f"data.speed must be >= 0, got {self.speed}")
        if self.path is None:
            check(self.image_size >= self.digit_size,
                  f"data.image_size={self.image_size} is smaller than data.digit_size={self.digit_size}: the moving "
                  "digits need a canvas at least one digit wide")


@dataclass(kw_only=True)
class VideoConfig:
    encoder: str = "pixels"
    """Frame encoder: `pixels` (p x p patches stacked as channels, nothing learnt), `autoencoder` (a frozen
    `ebt train --preset frame-ae-tiny` run, named by encoder_path) or `sd-vae` (a local diffusers AutoencoderKL
    folder named by encoder_path, the paper's choice; needs `pip install diffusers`)."""
    encoder_path: Optional[str] = None
    """The autoencoder's run folder (its weights are copied into the video checkpoint when training starts) or the
    SD-VAE folder (loaded whenever the checkpoint loads; its weights are not copied). Stored as an absolute path."""
    patch: int = 4
    """`pixels`: the patch side."""
    start: str = "noise"
    """EBT candidates start from `noise` (N(0, think.init_std^2), the paper's) or from the `last` context frame's
    latent plus that noise (the reference's `most_recent_embedding`)."""
    context_frames: int = 5
    """Frames given before generating, for `ebt eval video` and `ebt generate` (the reference's test setting)."""

    def __post_init__(self) -> None:
        check(self.encoder in ENCODERS, f"video.encoder={self.encoder!r} is not known: use one of {', '.join(ENCODERS)}")
        check(self.patch >= 1, f"video.patch must be >= 1, got {self.patch}")
        check(self.start in STARTS, f"video.start={self.start!r} is not known: use noise or last")
        check(self.context_frames >= 1, f"video.context_frames must be >= 1, got {self.context_frames}")


@dataclass(kw_only=True)
class AutoencoderConfig:
    width: int = 32
    """Channels of the first convolution (doubled at each downsampling)."""
    downsample: int = 2
    """Stride-2 stages: the latent is (latent_channels, H / 2^downsample, W / 2^downsample)."""
    latent_channels: int = 4

    def __post_init__(self) -> None:
        check_at_least_one("ae", self, ("width", "downsample", "latent_channels"))


@dataclass(kw_only=True)
class VideoRunConfig:
    FROM_DATA: ClassVar[tuple[str, ...]] = ("data.image_size", "data.channels")
    """Settings where 0 means "taken from the data when training starts" (a saved run holds the resolved values)."""
    FROM_RUN_START: ClassVar[tuple[str, ...]] = ("ae.width", "ae.downsample", "ae.latent_channels")
    """Settings copied in when training starts (from the autoencoder's run): a resumed run keeps its own."""
    task: str = "video"
    """The registered task of video runs (do not change)."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(vocab_size=0, context=15))
    think: ThinkConfig = field(default_factory=ThinkConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    ae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    """With video.encoder=autoencoder: the autoencoder's shape, copied from its run when training starts."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: VideoDataConfig = field(default_factory=VideoDataConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        check(self.task == "video", f"task={self.task!r}: video runs have task=video")
        text_only = self.think.text_only_settings()
        check(not text_only, f"think.{', think.'.join(text_only)}: text models only; remove it for video")
        check(self.video.context_frames <= self.model.context,
              f"video.context_frames={self.video.context_frames} must be <= model.context={self.model.context} "
              "(clips hold model.context + 1 frames)")
        check(self.video.encoder == "pixels" or self.video.encoder_path,
              f"video.encoder={self.video.encoder} needs video.encoder_path: the autoencoder's run folder "
              "(`ebt train --preset frame-ae-tiny`) or a local SD-VAE folder")
        if self.video.encoder == "pixels" and self.data.image_size:
            check(self.data.image_size % self.video.patch == 0,
                  f"data.image_size={self.data.image_size} is not divisible by video.patch={self.video.patch}")

    @property
    def clip_frames(self) -> int:
        return self.model.context + 1


@dataclass(kw_only=True)
class FrameAERunConfig:
    FROM_DATA: ClassVar[tuple[str, ...]] = ("data.image_size", "data.channels")
    task: str = "frame-ae"
    """The registered task of frame autoencoder runs (do not change)."""
    ae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: VideoDataConfig = field(default_factory=VideoDataConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        check(self.task == "frame-ae", f"task={self.task!r}: frame autoencoder runs have task=frame-ae")
        if self.data.image_size:
            check(self.data.image_size % 2 ** self.ae.downsample == 0,
                  f"data.image_size={self.data.image_size} is not divisible by 2^ae.downsample="
                  f"{2 ** self.ae.downsample}")


# ---- presets (registered in ebt.presets) ------------------------------------------------------------------------
def video_tiny() -> VideoRunConfig:
    """Next-frame EBT on 16x16 moving digits (16-frame clips, 4x4 pixel patches: 256 values per frame), S1 as the
    reference's video EBT: time_embed, 2 steps from noise, learnable alpha, SmoothL1 on latents; minutes on 2 CPU
    cores. `--model transformer` gives the Transformer++ regressor.

    The width (256) equals the latent size on purpose: the energy sees a candidate only through Linear(256, D), so its
    gradient moves candidates only within that map's row space, and noise outside it would never be removed
    (measured at 32x32 frames, 1,024 values, with width 128: the EBT's loss stayed at the noise floor, 0.44, against
    copy-last-frame's 0.045; docs/video.md)."""
    return VideoRunConfig(
        model=ModelConfig(vocab_size=0, dim=256, layers=4, heads=4, context=15, conditioning="time_embed"),
        think=ThinkConfig(landscapes=2, alpha=10.0, learn_alpha=True, alpha_lr_mult=30.0),
        video=VideoConfig(encoder="pixels", patch=4),
        optim=OptimConfig(lr=1e-3, warmup_steps=50, weight_decay=0.01),
        train=TrainConfig(steps=600, batch_size=16, eval_every=200, eval_batches=8, out_dir="runs/video-tiny"),
        data=VideoDataConfig(image_size=16, digit_size=8, speed=1.5),
    )


def frame_ae_tiny() -> FrameAERunConfig:
    """The small convolutional frame autoencoder (32x32 -> 4x8x8 = 256 latents) on moving-digit frames, for
    `--video.encoder=autoencoder --video.encoder_path=runs/frame-ae-tiny --data.image_size=32 --data.digit_size=12`
    (video-tiny's width keeps the latents full rank)."""
    return FrameAERunConfig(
        optim=OptimConfig(lr=2e-3, warmup_steps=50, weight_decay=0.0),
        train=TrainConfig(steps=600, batch_size=64, eval_every=200, eval_batches=4, out_dir="runs/frame-ae-tiny"),
        data=VideoDataConfig(),
    )
