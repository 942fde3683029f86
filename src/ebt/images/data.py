"""Image data, offline: crops of scikit-learn's sample photos, scikit-learn's digits, a user's folder of PNG/JPEG
files, one image file, or an array file (.npy / .npz / .pt). Nothing is downloaded.

Loaders return float tensors (N, C, H, W) in [0, 1]; `ImageSet` stores them in [-1, 1] (the reference's
Normalize(0.5, 0.5)) and serves shuffled, resumable, rank-sharded batches like the text windows.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from ebt.errors import UserError
from ebt.images.config import ImageDataConfig
from ebt.media import IMAGE_SUFFIXES, read_image, resize_crop, to_channels
from ebt.training.sharding import sharded_indices

ARRAY_SUFFIXES = (".npy", ".npz", ".pt")


# ---- embedded sets ----------------------------------------------------------------------------------------------
def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)  # two (427, 640, 3) uint8 photographs (china, flower)


def embedded_photo_crops(cfg: ImageDataConfig) -> tuple[Tensor, Tensor]:
    """Training crops (stride `crop_stride`) from the top of each photo, test crops from its held-out bottom rows.

    Test crops use a stride of half a crop, so they overlap each other but never the training region.
    """
    from PIL import Image

    size = cfg.image_size or 32
    train, test = [], []
    for arr in _photos():
        img = Image.fromarray(arr)
        if cfg.photo_scale < 1:
            img = img.resize((round(img.width * cfg.photo_scale), round(img.height * cfg.photo_scale)),
                             Image.Resampling.LANCZOS)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255  # (3, H, W)
        if cfg.channels == 1:
            x = to_channels(x[None], 1)[0]
        h = x.shape[1]
        split = h - max(size, int(round(h * cfg.val_fraction)))  # first held-out row
        if split < size:
            raise UserError(f"data.image_size={size} is too large for the photos at data.photo_scale="
                            f"{cfg.photo_scale}: use a smaller crop or a larger scale")
        train.append(_crops(x[:, :split], size, cfg.crop_stride))
        test.append(_crops(x[:, split:], size, max(1, size // 2)))
    return torch.cat(train), torch.cat(test)


def _crops(x: Tensor, size: int, stride: int) -> Tensor:
    """All size x size crops of x (C, H, W) on a stride grid -> (N, C, size, size)."""
    tiles = x.unfold(1, size, stride).unfold(2, size, stride)  # (C, nH, nW, size, size)
    return tiles.permute(1, 2, 0, 3, 4).reshape(-1, x.shape[0], size, size)


def embedded_digits() -> Tensor:
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().images).float()[:, None] / 16.0  # (1797, 1, 8, 8), values 0..16


# ---- user files -------------------------------------------------------------------------------------------------
def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no PNG/JPEG images found in {str(folder)!r}: pass a folder of .png/.jpg files")
    return files


def _read_image_files(files: list[Path], image_size: int, channels: int) -> Tensor:
    images = [(f, read_image(f)) for f in files]
    counts = {x.shape[0] for _, x in images}
    if channels == 0 and len(counts) > 1:
        raise UserError(f"images have mixed channel counts {sorted(counts)} (e.g. {images[0][0].name}: "
                        f"{images[0][1].shape[0]}): pass --data.channels=3 (or 1) to convert them")
    shapes = {tuple(x.shape[-2:]) for _, x in images}
    if image_size == 0 and len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise UserError(f"images have mixed sizes ({a[0]}x{a[1]}, {b[0]}x{b[1]}, ...): pass --data.image_size=N "
                        "to resize and centre-crop them to N x N")
    out = [resize_crop(to_channels(x[None], channels), image_size) if image_size else to_channels(x[None], channels)
           for _, x in images]
    return torch.cat(out)


def _read_array(path: Path) -> Tensor:
    try:
        if path.suffix == ".pt":
            with warnings.catch_warnings():   # torch's notes on foreign pickles are not the user's concern
                warnings.simplefilter("ignore")
                data = torch.load(path, map_location="cpu", weights_only=True)
            arr = data if isinstance(data, Tensor) else None
        else:
            data = np.load(path, allow_pickle=False)
            if isinstance(data, np.lib.npyio.NpzFile):
                keys = [k for k in ("images", "x", "arr_0") if k in data.files] or data.files[:1]
                data = data[keys[0]] if keys else None
            arr = None if data is None else torch.from_numpy(np.asarray(data))
    except Exception as exc:  # torch and numpy raise many types for damaged, foreign or code-carrying files
        raise UserError(f"cannot read array file {str(path)!r} ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:160]}): pass a .npy/.npz/.pt array of images") from None
    if arr is None or arr.ndim not in (2, 3, 4):
        raise UserError(f"{str(path)!r} holds no (N, H, W[, C]) or (N, C, H, W) image array")
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.ndim == 3:
        arr = arr[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3):
        arr = arr.permute(0, 3, 1, 2)  # channels-last -> (N, C, H, W)
    if arr.shape[1] == 4:
        arr = arr[:, :3]  # drop alpha
    if arr.shape[1] not in (1, 3):
        raise UserError(f"{str(path)!r}: images must have 1 or 3 channels, got shape {tuple(arr.shape)}")
    x = arr.float()
    if not arr.is_floating_point() or x.max() > 1.0 + 1e-6:
        x = x / 255.0  # 0..255 storage
    elif x.min() < -1e-6:
        x = (x + 1) / 2  # already normalised to [-1, 1]
    return x.clamp(0, 1)


def load_images(path: str | Path, image_size: int = 0, channels: int = 0) -> Tensor:
    """A folder of PNG/JPEG files, one image file, or an array file -> (N, C, H, W) in [0, 1]."""
    path = Path(path)
    if path.is_dir():
        return _read_image_files(_image_files(path), image_size, channels)
    if not path.is_file():
        raise UserError(f"image input {str(path)!r} does not exist: pass a folder, an image or an array file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _read_image_files([path], image_size, channels)
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        raise UserError(f"{str(path)!r} is not a PNG/JPEG image or a .npy/.npz/.pt array file")
    x = to_channels(_read_array(path), channels)
    if image_size:
        return resize_crop(x, image_size)
    if x.shape[-2] != x.shape[-1]:
        raise UserError(f"{str(path)!r} holds {x.shape[-2]}x{x.shape[-1]} images: the models need square images; "
                        "pass --data.image_size=N to resize and centre-crop them")
    return x


def image_names(path: str | Path, count: int) -> list[str]:
    """Output names for the images `load_images(path)` returns: file stems, or STEM_0000.. for arrays."""
    path = Path(path)
    if path.is_dir():
        return [str(f.relative_to(path).with_suffix("")).replace("/", "_") for f in _image_files(path)]
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [path.stem]
    return [f"{path.stem}_{i:04d}" for i in range(count)]


# ---- datasets ---------------------------------------------------------------------------------------------------
class ImageSet:
    """Images (N, C, H, W) stored in [-1, 1] with shuffled, resumable, rank-sharded batches."""

    def __init__(self, images01: Tensor):
        self.images = images01.float() * 2 - 1  # [0, 1] -> [-1, 1]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # (C, H, W)

    def batches(self, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tensor]:
        """Endless (B, C, H, W) batches of process `rank` of `world`; `start` = samples all processes consumed before
        (exact resume on any world size); one shuffle per epoch. The layout is `ebt.training.sharding`'s."""
        for indices in sharded_indices(len(self), batch_size, seed, start, rank, world):
            yield self.images[indices]


def load_dataset(cfg: ImageDataConfig) -> tuple[ImageSet, ImageSet]:
    """(train, held-out) sets for a run's data config."""
    if cfg.path is None and cfg.embedded == "photos":
        train, test = embedded_photo_crops(cfg)
    else:
        if cfg.path is None:
            x = to_channels(embedded_digits(), cfg.channels)
            x = resize_crop(x, cfg.image_size) if cfg.image_size else x
        else:
            x = load_images(cfg.path, cfg.image_size, cfg.channels)
        if cfg.max_images:
            x = x[:cfg.max_images]
        n_val = max(1, int(round(len(x) * cfg.val_fraction)))
        if len(x) - n_val < 1:
            raise UserError(f"{len(x)} image(s) are too few for a training and a held-out split: add images")
        train, test = x[:-n_val], x[-n_val:]
    if cfg.max_images and cfg.path is None and cfg.embedded == "photos":
        train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:cfg.max_images]]
    return ImageSet(train), ImageSet(test)
