"""The trainer tasks of video: `video` (next-frame EBT or Transformer++ on encoded clips) and `frame-ae` (the frame
autoencoder that `video.encoder=autoencoder` uses); both registered with `ebt.training.registry`. Also the model
builders and loaders of video checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ebt.config import OptimConfig
from ebt.errors import UserError
from ebt.training.checkpoint import load_checked
from ebt.training.optim import adamw_groups
from ebt.training.pretrained import HubMixin
from ebt.training.registry import InMemoryTask, evaluating, register_task
from ebt.video.config import FrameAERunConfig, VideoRunConfig
from ebt.video.data import ClipSet, load_clips
from ebt.video.encoders import ConvAutoencoder, FrameEncoder, PixelEncoder, SDVAEEncoder
from ebt.video.evaluate import psnr_db
from ebt.video.models import VIDEO_MODELS, VideoOutput

CALIBRATION_FRAMES = 512
"""Training frames whose latents set a learnt encoder's scale."""


def resolve_frames(cfg, frame_shape: tuple[int, int, int]) -> None:
    """Fill data.image_size / data.channels from the data when they are 0 (saved with the run)."""
    c, h, _ = frame_shape
    cfg.data.image_size, cfg.data.channels = cfg.data.image_size or h, cfg.data.channels or c


# ---- the frame autoencoder --------------------------------------------------------------------------------------
class FrameAutoencoder(HubMixin, nn.Module):
    """Trains `ConvAutoencoder` on single frames: MSE of the reconstruction."""

    kind = "autoencoder"

    def __init__(self, cfg: FrameAERunConfig):
        super().__init__()
        self.cfg = cfg
        self.ae = ConvAutoencoder(cfg.ae, cfg.data.channels, cfg.data.image_size)

    def forward(self, frames: Tensor, training: Optional[bool] = None) -> VideoOutput:
        loss = F.mse_loss(self.ae.reconstruct(frames), frames)
        return VideoOutput(loss, {"mse": loss.item()})

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        return adamw_groups(self, optim)


class FrameAETask(InMemoryTask):
    """The frames of the training clips (each frame once); validates reconstruction MSE and PSNR."""

    def __init__(self, cfg: FrameAERunConfig):
        self.cfg = cfg
        train, val = load_clips(cfg.data, length=1)
        self.train_set, self.val_set = ClipSet(train.clips[:, 0] / 2 + 0.5), ClipSet(val.clips[:, 0] / 2 + 0.5)
        resolve_frames(cfg, tuple(self.train_set.clips.shape[1:]))

    def describe(self) -> str:
        return "frame-ae"

    def build_model(self) -> nn.Module:
        return FrameAutoencoder(self.cfg)

    def evaluate(self, model: nn.Module, device, max_batches: int, batch_size: int, precision: str = "fp32") -> dict:
        frames = self.val_set.clips[:max_batches * batch_size].to(device)
        with evaluating(model, device):
            mse = sum(F.mse_loss(model.ae.reconstruct(frames[i:i + batch_size]), frames[i:i + batch_size],
                                 reduction="sum").item() for i in range(0, len(frames), batch_size)) / frames.numel()
        return {"loss": mse, "psnr": psnr_db(mse)}


def load_autoencoder(path: str | Path) -> tuple[ConvAutoencoder, FrameAERunConfig]:
    model, cfg = load_checked(path, "frame-ae", FrameAERunConfig, FrameAutoencoder, None,
                              "is not a frame autoencoder run (it holds a {task} model): train one with `ebt train --preset "
                              "frame-ae-tiny` and pass its folder as --video.encoder_path", "")
    return model.ae, cfg


# ---- next-frame video -------------------------------------------------------------------------------------------
def build_encoder(cfg: VideoRunConfig) -> FrameEncoder:
    """The run's frame encoder, untrained (its weights come from the checkpoint or from `VideoTask`)."""
    c, size = cfg.data.channels, cfg.data.image_size
    if not (c and size):
        raise UserError("data.image_size and data.channels are unresolved (0): they are set from the data when "
                        "training starts")
    if cfg.video.encoder == "pixels":
        return PixelEncoder(c, size, cfg.video.patch)
    if cfg.video.encoder == "autoencoder":
        return ConvAutoencoder(cfg.ae, c, size)
    return SDVAEEncoder(cfg.video.encoder_path, c, size)


def build_video_model(cfg: VideoRunConfig) -> nn.Module:
    return VIDEO_MODELS[cfg.model.kind](cfg, build_encoder(cfg))


def load_video_model(path: str | Path, kind: Optional[str] = None) -> tuple[nn.Module, VideoRunConfig]:
    """Rebuild a video model from a checkpoint or run folder; `kind` refuses the other model type."""
    model, cfg = load_checked(path, "video", VideoRunConfig, build_video_model, kind,
                              "holds a {task} model ({found}), not a video model: pass a checkpoint trained with "
                              "--preset video-tiny", "holds a video {found}, but a {kind} is expected here")
    return model.eval(), cfg


class VideoTask(InMemoryTask):
    """Next-frame prediction on clips of model.context + 1 frames; validates the latent SmoothL1 of one-step
    (teacher-forced) predictions beside copy-last-frame's."""

    def __init__(self, cfg: VideoRunConfig):
        self.cfg = cfg
        if cfg.video.encoder == "sd-vae":   # read again at every load: keep it findable from anywhere
            cfg.video.encoder_path = str(Path(cfg.video.encoder_path).resolve())
        self.train_set, self.val_set = load_clips(cfg.data, cfg.clip_frames)
        resolve_frames(cfg, self.train_set.frame_shape)
        self.autoencoder = None
        if cfg.video.encoder == "autoencoder":   # the autoencoder's shape and frames must match the run's
            self.autoencoder, ae_cfg = load_autoencoder(cfg.video.encoder_path)
            if (ae_cfg.data.image_size, ae_cfg.data.channels) != (cfg.data.image_size, cfg.data.channels):
                raise UserError(f"the autoencoder in {cfg.video.encoder_path!r} encodes {ae_cfg.data.channels}-channel "
                                f"{ae_cfg.data.image_size}px frames, the data are {cfg.data.channels}-channel "
                                f"{cfg.data.image_size}px: set --data.image_size/--data.channels to match")
            cfg.ae = ae_cfg.ae

    def describe(self) -> str:
        return f"{self.cfg.model.kind}-video"

    def build_model(self) -> nn.Module:
        """A fresh model; a learnt encoder gets its trained weights and its latent scale from training frames."""
        model = build_video_model(self.cfg)
        if model.encoder.scale.is_meta:   # the trainer counts parameters on the meta device: no weights to set
            return model
        if self.cfg.video.encoder == "autoencoder":
            model.encoder.load_state_dict(self.autoencoder.state_dict())
        if self.cfg.video.encoder != "pixels":
            model.encoder.calibrate(self.train_set.clips.flatten(0, 1)[:CALIBRATION_FRAMES])
        return model

    def evaluate(self, model: nn.Module, device, max_batches: int, batch_size: int, precision: str = "fp32") -> dict:
        """Held-out loss (one-step predictions, latent SmoothL1), and copy-last-frame's (the same on every rank)."""
        clips = self.val_set.clips[:max_batches * batch_size].to(device)
        totals: dict[str, float] = {}
        with evaluating(model, device):
            for i in range(0, len(clips), batch_size):
                out = model(clips[i:i + batch_size], training=False)
                for k in ("final_loss", "final_mse", "copy_last_loss"):
                    totals[k] = totals.get(k, 0.0) + out.metrics[k] * len(clips[i:i + batch_size])
        res = {k: v / len(clips) for k, v in totals.items()}
        return {"loss": res["final_loss"], "mse": res["final_mse"], "copy_last_loss": res["copy_last_loss"]}


register_task("video", VideoRunConfig, VideoTask)
register_task("frame-ae", FrameAERunConfig, FrameAETask)
