"""Pixels in and out, shared by the image and video modalities: reading image files, GIFs and videos, resizing and
centre-cropping, channel conversion, and writing PNGs and GIFs. Frames are float tensors in [0, 1]: (C, H, W) for
one image, (N, C, H, W) for several.

MP4 and other ffmpeg formats go through imageio's ffmpeg plugin (`pip install "energy-based-transformers[video]"`;
its wheel ships the ffmpeg binary). Nothing here downloads anything.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ebt.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GIF_SUFFIXES = (".gif",)
FFMPEG_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
VIDEO_SUFFIXES = GIF_SUFFIXES + FFMPEG_SUFFIXES


def pil_to_tensor(img) -> Tensor:
    """A PIL image -> (C, H, W) in [0, 1]; alpha and palettes are dropped (1 or 3 channels only)."""
    if img.mode not in ("L", "RGB"):
        img = img.convert("L" if img.mode in ("1", "LA", "I", "I;16", "F") else "RGB")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())


def to_channels(x: Tensor, channels: int) -> Tensor:
    """(N, C, H, W) -> (N, channels, H, W): grey repeated to RGB, RGB to grey by ITU-R 601 luminance."""
    if channels == 0 or x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * w[None, :, None, None]).sum(1, keepdim=True)


def resize_crop(x: Tensor, size: int) -> Tensor:
    """Resize (N, C, H, W) so the shorter side is `size` (antialiased bicubic), then centre-crop to size x size."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top:top + size, left:left + size]


def read_image(path: Path) -> Tensor:
    """One PNG/JPEG file -> (C, H, W) in [0, 1], or one line naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return pil_to_tensor(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot read image {str(path)!r} ({exc}): remove it or fix the file") from None


def read_video(path: Path, convert=None) -> Tensor:
    """A GIF or an ffmpeg-readable video (MP4, ...) -> frames (F, C, H, W) in [0, 1]. `convert` (frames (1, C, H, W)
    -> frames) is applied to each frame as it is decoded, e.g. resizing, so the video is never held at full size."""
    path = Path(path)
    convert = convert or (lambda f: f)
    if path.suffix.lower() in GIF_SUFFIXES:
        return _read_gif(path, convert)
    if not ffmpeg_available():
        raise UserError(f"reading {str(path)!r} needs imageio's ffmpeg plugin: pip install "
                        "'energy-based-transformers[video]' (or convert the video to GIF or a folder of PNG frames)")
    import imageio.v3 as iio

    try:
        frames = [convert(_frame_to_tensor(f)[None])[0] for f in iio.imiter(path, plugin="FFMPEG")]   # (H, W, 3)
    except Exception as exc:   # imageio and ffmpeg raise many types for damaged or foreign files
        raise UserError(f"cannot read video {str(path)!r} ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:160]}): check the file or convert it") from None
    if not frames:
        raise UserError(f"video {str(path)!r} has no frames: check the file or convert it")
    return torch.stack(frames)


def _read_gif(path: Path, convert) -> Tensor:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            frames = [convert(pil_to_tensor(f.convert("RGB") if f.mode == "P" else f)[None])[0]
                      for f in ImageSequence.Iterator(img)]
    except (UnidentifiedImageError, OSError, EOFError) as exc:
        raise UserError(f"cannot read video {str(path)!r} ({exc}): check the file or convert it") from None
    return torch.stack(frames)


def _frame_to_tensor(arr: np.ndarray) -> Tensor:
    """One (H, W[, C]) uint8 frame -> (C, H, W) in [0, 1]."""
    x = torch.from_numpy(arr.astype(np.float32) / 255.0)
    return x[None] if x.ndim == 2 else x[..., :3].permute(2, 0, 1).contiguous()


def ffmpeg_available() -> bool:
    """Whether imageio and its ffmpeg plugin (the `video` extra) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("imageio", "imageio_ffmpeg"))


def to_uint8(images01: Tensor) -> np.ndarray:
    """(..., C, H, W) in [0, 1] -> uint8 array (..., H, W) for one channel, (..., H, W, 3) for three."""
    arr = (images01.detach().float().clamp(0, 1) * 255).round().byte().cpu()
    return arr[..., 0, :, :].numpy() if arr.shape[-3] == 1 else arr.movedim(-3, -1).numpy()


def save_png(image01: Tensor, path: str | Path) -> None:
    """Write one (C, H, W) image in [0, 1] as an 8-bit PNG."""
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image01)).save(path)


def save_gif(frames01: Tensor, path: str | Path, fps: float = 4.0, scale: int = 1) -> None:
    """Write frames (F, C, H, W) in [0, 1] as a looping GIF, each pixel enlarged `scale` times."""
    from PIL import Image

    if scale > 1:
        frames01 = frames01.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    images = [Image.fromarray(a) for a in to_uint8(frames01)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
