"""Video data, offline: the embedded moving digits (scikit-learn's digits bouncing on a canvas, generated from a
seed), or a user's videos: GIF/MP4 files, folders of frames, array files (N, F, H, W[, C]). Nothing is downloaded.

Videos are cut into clips of `length` frames (every `stride`-th frame, a new clip every `hop` frames). `ClipSet`
stores clips (N, F, C, H, W) in [-1, 1] and serves shuffled, resumable, rank-sharded batches like the other tasks.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ebt.errors import UserError
from ebt.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_image, read_video, resize_crop, to_channels
from ebt.training.sharding import sharded_indices
from ebt.video.config import VideoDataConfig

ARRAY_SUFFIXES = (".npy", ".npz")
CHANNELS = (1, 2, 3, 4)
"""Channel counts an array may have: grey, grey + alpha, RGB, RGBA (alpha is dropped)."""
TRAIN_DIGITS = 1500
"""scikit-learn's digits 0..1499 draw the training videos, 1500..1796 the held-out ones (unseen digit images)."""


# ---- the embedded moving digits ---------------------------------------------------------------------------------
def moving_digits(count: int, frames: int, cfg: VideoDataConfig, held_out: bool = False) -> Tensor:
    """`count` videos (count, frames, 1, S, S) in [0, 1], S = cfg.image_size: cfg.digits digits each, moving at
    constant velocity (up to cfg.speed pixels per frame per axis) and bouncing off the edges; overlapping digits
    combine by their maximum. Deterministic given cfg.seed; `held_out` uses other digit images and another stream."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images).float()[:, None] / 16.0           # (1797, 1, 8, 8)
    images = images[TRAIN_DIGITS:] if held_out else images[:TRAIN_DIGITS]
    d, size = cfg.digit_size, cfg.image_size
    sprites = F.interpolate(images, size=(d, d), mode="bilinear", align_corners=False).clamp(0, 1)[:, 0]
    rng = np.random.default_rng([cfg.seed, 1 if held_out else 0])
    room = size - d                                                                  # top-left positions 0..room
    pick = rng.integers(0, len(sprites), size=(count, cfg.digits))
    pos = rng.uniform(0, room, size=(count, cfg.digits, 2))
    vel = rng.uniform(-cfg.speed, cfg.speed, size=(count, cfg.digits, 2))
    free = pos[:, :, None] + vel[:, :, None] * np.arange(frames)[None, None, :, None]  # (count, digits, F, 2)
    # bouncing off the edges = folding the free path into [0, room] (a triangle wave), at any speed
    path = room - np.abs(room - np.mod(free, 2 * room)) if room > 0 else np.zeros_like(free)
    corner = np.rint(path).astype(int)
    out = torch.zeros(count, frames, 1, size, size)
    for n in range(count):
        for k in range(cfg.digits):
            for t in range(frames):
                y, x = corner[n, k, t]
                patch = out[n, t, 0, y:y + d, x:x + d]
                torch.maximum(patch, sprites[pick[n, k]], out=patch)
    return out


# ---- user videos ------------------------------------------------------------------------------------------------
def _frames(x: Tensor, cfg: VideoDataConfig) -> Tensor:
    """(F, C, H, W) in [0, 1] -> the configured channels and size."""
    x = to_channels(x, cfg.channels)
    return resize_crop(x, cfg.image_size) if cfg.image_size else x


def _read_array(path: Path) -> list[Tensor]:
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                key = next((k for k in ("videos", "x", "arr_0") if k in data.files),
                           data.files[0] if data.files else None)
                data = None if key is None else data[key]
        arr = None if data is None else torch.from_numpy(np.asarray(data))
    except Exception as exc:  # numpy raises many types for damaged, foreign or pickled files
        raise UserError(f"cannot read array file {str(path)!r} ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:160]}): pass a .npy/.npz array of videos") from None
    if arr is None or arr.ndim not in (4, 5):
        raise UserError(f"{str(path)!r} holds no (N, F, H, W[, C]) video array (got shape "
                        f"{None if arr is None else tuple(arr.shape)}): save the videos as one such array")
    if arr.numel() == 0:
        raise UserError(f"{str(path)!r} holds an empty array of shape {tuple(arr.shape)}: save some frames")
    if arr.ndim == 4 and arr.shape[-1] in CHANNELS and arr.shape[-2] > 4:
        raise UserError(f"{str(path)!r} holds shape {tuple(arr.shape)}: that looks like one video (F, H, W, C); "
                        "save it as (1, F, H, W, C) (grey videos are (N, F, H, W))")
    if arr.ndim == 5:   # channels last (N, F, H, W, C) or first (N, F, C, H, W)
        last, first = arr.shape[-1] in CHANNELS, arr.shape[2] in CHANNELS
        if last == first:
            raise UserError(f"{str(path)!r} holds shape {tuple(arr.shape)}: cannot tell its channel axis; save "
                            "videos as (N, F, H, W, C) or (N, F, C, H, W) with C in 1..4")
        arr = arr.movedim(-1, 2) if last else arr
        arr = arr[:, :, :1] if arr.shape[2] == 2 else arr[:, :, :3]                 # drop alpha
    else:
        arr = arr[:, :, None]                                                         # (N, F, 1, H, W)
    x = arr.float()
    if not arr.is_floating_point() or x.max() > 1.0 + 1e-6:
        x = x / 255.0
    elif x.min() < -1e-6:
        x = (x + 1) / 2
    return list(x.clamp(0, 1))


def _frame_folder(folder: Path, convert) -> Tensor:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    frames = [convert(read_image(f)[None])[0] for f in files]
    if len({tuple(f.shape) for f in frames}) > 1:
        raise UserError(f"the frames in {str(folder)!r} have mixed sizes or channel counts: pass --data.image_size=N "
                        "(and --data.channels=1 or 3) to resize them")
    return torch.stack(frames)


def _source_videos(path: Path, convert) -> list[tuple[str, Tensor]]:
    """(name, frames (F, C, H, W) in [0, 1]) for every video `path` holds, each passed through `convert` (frames of
    video files one at a time as they are decoded, so a long high-resolution video is never held at full size)."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in ARRAY_SUFFIXES:
            return [(f"{path.name}[{i}]", convert(v)) for i, v in enumerate(_read_array(path))]
        if suffix in VIDEO_SUFFIXES:
            return [(path.name, read_video(path, convert))]
        raise UserError(f"{str(path)!r} is not a video (GIF, MP4, ...) or a .npy/.npz array of videos")
    if not path.is_dir():
        raise UserError(f"video data {str(path)!r} does not exist: pass a video, a folder of videos or frame folders, "
                        "or an array file")
    entries = sorted(path.iterdir())
    if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return [(path.name, _frame_folder(path, convert))]                                  # a folder of frames: one video
    videos = []
    for p in entries:
        if p.is_dir() and any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir()):
            videos.append((p.name, _frame_folder(p, convert)))
        elif p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES + ARRAY_SUFFIXES:
            videos.extend(_source_videos(p, convert))
    if not videos:
        raise UserError(f"no videos found in {str(path)!r}: put GIF/MP4 files, folders of PNG/JPEG frames or "
                        ".npy/.npz arrays there")
    return videos


def load_videos(path: str | Path, cfg: VideoDataConfig) -> list[tuple[str, Tensor]]:
    """A user's videos, each (F, C, H, W) in [0, 1] at the configured size and channels."""
    videos = _source_videos(Path(path), lambda frames: _frames(frames, cfg))
    shapes = {tuple(v.shape[1:]) for _, v in videos}
    if len(shapes) > 1:
        (a, va), (b, vb) = [next((n, v) for n, v in videos if tuple(v.shape[1:]) == s) for s in sorted(shapes)[:2]]
        raise UserError(f"videos have mixed frame sizes ({a}: {tuple(va.shape[1:])}, {b}: {tuple(vb.shape[1:])}): "
                        "pass --data.image_size=N and --data.channels=1 or 3 to resize and convert them")
    c, h, w = shapes.pop()
    if h != w:
        raise UserError(f"frames are {h}x{w}: the frame encoders need square frames; pass --data.image_size=N to "
                        "resize and centre-crop them")
    return videos


def cut_clips(name: str, video: Tensor, length: int, stride: int = 1, hop: int = 0) -> Tensor:
    """Clips (K, length, C, H, W) of every `stride`-th frame of video (F, C, H, W), a new clip every `hop` frames
    (0: length, no overlap)."""
    frames = video[::stride]
    hop = hop or length
    if len(frames) < length:
        raise UserError(f"video {name!r} has {len(frames)} frame(s) at stride {stride}, fewer than a clip's {length} "
                        "(model.context + 1 in training, --context + --horizon in `ebt eval video`): use longer "
                        "videos, a smaller --data.stride or shorter clips")
    return torch.stack([frames[s:s + length] for s in range(0, len(frames) - length + 1, hop)])


# ---- datasets ---------------------------------------------------------------------------------------------------
class ClipSet:
    """Clips (N, F, C, H, W) stored in [-1, 1] with shuffled, resumable, rank-sharded batches."""

    def __init__(self, clips01: Tensor):
        self.clips = clips01.float() * 2 - 1

    def __len__(self) -> int:
        return self.clips.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return tuple(self.clips.shape[2:])  # (C, H, W)

    def batches(self, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tensor]:
        """Endless (B, F, C, H, W) batches of process `rank` of `world` (`ebt.training.sharding`'s layout)."""
        for indices in sharded_indices(len(self), batch_size, seed, start, rank, world):
            yield self.clips[indices]


def heldout_clips(cfg: VideoDataConfig, length: int, train_length: int) -> ClipSet:
    """A run's held-out clips, `length` frames each, for evaluation and generation: the held-out moving digits
    (generated alone), or those of the run's videos, split where the run (clips of `train_length`) split them."""
    if cfg.path is None:
        return digit_clips(cfg, length, held_out=True)
    return load_clips(cfg, length, train_length)[1]


def digit_clips(cfg: VideoDataConfig, length: int, held_out: bool) -> ClipSet:
    """Moving-digit clips of `length` frames: cfg.videos training videos, or a tenth as many held-out ones."""
    count = max(1, cfg.videos // 10) if held_out else cfg.videos
    clips = moving_digits(count, (length - 1) * cfg.stride + 1, cfg, held_out)[:, ::cfg.stride]
    return ClipSet(_frames(clips.flatten(0, 1), cfg).unflatten(0, clips.shape[:2]))


def load_clips(cfg: VideoDataConfig, length: int, train_length: int = 0) -> tuple[ClipSet, ClipSet]:
    """(train, held-out) clips of `length` frames for a run's data config. One video is split where clips of
    `train_length` frames (default: `length`) split it, so that held-out clips of another length stay held out."""
    if cfg.path is None:
        return digit_clips(cfg, length, held_out=False), digit_clips(cfg, length, held_out=True)
    videos = load_videos(cfg.path, cfg)
    if len(videos) == 1:   # one video: its last frames are held out (no clip straddles the split)
        name, v = videos[0]
        span = ((train_length or length) - 1) * cfg.stride + 1
        if len(v) < 2 * span:
            raise UserError(f"one video of {len(v)} frames cannot give a training and a held-out clip of {length} "
                            f"frames at stride {cfg.stride} (it needs {2 * span}): add videos, use a longer one, or "
                            "shorten the clips (--model.context, --data.stride)")
        cut = len(v) - max(span, math.ceil(len(v) * cfg.val_fraction))
        videos = [(name, v[:cut]), (name + " (held-out part)", v[cut:])]
        n_val = 1
    else:
        n_val = min(len(videos) - 1, max(1, round(len(videos) * cfg.val_fraction)))
    clips = [cut_clips(n, v, length, cfg.stride, cfg.hop) for n, v in videos]
    return ClipSet(torch.cat(clips[:-n_val])), ClipSet(torch.cat(clips[-n_val:]))


def all_clips(cfg: VideoDataConfig, length: int) -> ClipSet:
    """Every clip of `length` frames of a user's videos (cfg.path), none held back: clips to evaluate on."""
    return ClipSet(torch.cat([cut_clips(n, v, length, cfg.stride, cfg.hop) for n, v in load_videos(cfg.path, cfg)]))
