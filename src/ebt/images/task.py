"""The trainer task for image denoising: binds an `ImageRunConfig` to its images and model; registered as
"denoise" (`ebt.training.registry`)."""
from __future__ import annotations

from torch import nn

from ebt.errors import UserError
from ebt.images.config import ImageRunConfig, check_divisible
from ebt.images.data import load_dataset
from ebt.images.denoisers import build_image_model
from ebt.images.evaluate import evaluate_at_level
from ebt.training.registry import InMemoryTask, evaluating, register_task


def resolve_shape(cfg: ImageRunConfig, shape: tuple[int, int, int]) -> None:
    """Fill model.image_size / model.channels from the data (they are saved with the checkpoint) or refuse a
    mismatch. Mutates `cfg`, so the run's saved config holds the resolved values."""
    c, h, w = shape
    if h != w:
        raise UserError(f"images are {h}x{w}: the models need square images; pass --data.image_size=N "
                        "to resize and centre-crop them")
    check_divisible(h, cfg.model.patch)
    for name, got in (("image_size", h), ("channels", c)):
        want = getattr(cfg.model, name)
        if want and want != got:
            fix = "--data.image_size" if name == "image_size" else "--data.channels"
            raise UserError(f"model.{name}={want} but the data have {got}: set {fix}={want} or model.{name}=0")
        setattr(cfg.model, name, got)


class DenoiseTask(InMemoryTask):
    """Denoising of the embedded photo crops / digits or a user's images; validates at the training noise level."""

    def __init__(self, cfg: ImageRunConfig):
        self.cfg = cfg
        self.train_set, self.val_set = load_dataset(cfg.data)
        resolve_shape(cfg, self.train_set.shape)

    def describe(self) -> str:
        return f"{self.cfg.model.kind}-denoise"

    def build_model(self) -> nn.Module:
        return build_image_model(self.cfg)

    def evaluate(self, model: nn.Module, device, max_batches: int, batch_size: int, precision: str = "fp32") -> dict:
        """Held-out loss, PSNR and MSE at the training noise level (every rank computes the same numbers)."""
        clean = self.val_set.images[:max_batches * batch_size].to(device)
        with evaluating(model, device):   # the EBT's descent turns gradients back on for its candidates
            loss = sum(model(clean[i:i + batch_size], training=False).loss.item() * len(clean[i:i + batch_size])
                       for i in range(0, len(clean), batch_size)) / len(clean)
            res = evaluate_at_level(model, clean, self.cfg.diffusion.train_level, batch_size, seed=1234)
        return {"loss": loss, **res}


register_task("denoise", ImageRunConfig, DenoiseTask)
