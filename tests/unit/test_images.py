"""Image denoising: patchify, exact second-order gradients of the bidirectional EBT, the DDPM schedule and DDIM,
forward-pass counts, image loading."""
import numpy as np
import pytest
import torch

from ebt.config import OptimConfig, ThinkConfig, TrainConfig
from ebt.errors import UserError
from ebt.images.config import DiffusionConfig, ImageDataConfig, ImageModelConfig, ImageRunConfig
from ebt.images.data import load_images
from ebt.images.denoisers import DiTDenoiser, EBTDenoiser
from ebt.images.diffusion import DDPMSchedule
from ebt.images.models import patchify, unpatchify

from conftest import write_pngs


pytestmark = pytest.mark.usefixtures("one_thread_per_module")   # tiny models: one thread


def tiny_cfg(kind: str = "ebt", **think) -> ImageRunConfig:
    return ImageRunConfig(
        model=ImageModelConfig(kind=kind, image_size=8, channels=1, patch=2, dim=16, layers=2, heads=2),
        think=ThinkConfig(landscapes=1, alpha=0.5, **think),
        optim=OptimConfig(warmup_steps=1),
        train=TrainConfig(steps=2, batch_size=4, progress=False),
        data=ImageDataConfig(embedded="digits", max_images=32),
    )


# ---- the three "done when" checks --------------------------------------------------------------------------------
def test_patchify_unpatchify_identity():
    x = torch.randn(3, 3, 12, 8)                                                # (B, C, H, W), non-square
    tokens = patchify(x, 4)                                                     # (B, 6, 48)
    assert tokens.shape == (3, 6, 48)
    assert torch.equal(unpatchify(tokens, 4, 3, 12, 8), x)
    assert torch.equal(tokens[0, 1].view(4, 4, 3).permute(2, 0, 1), x[0, :, 0:4, 4:8])  # row-major patches


def test_second_order_gradient_matches_finite_differences():
    """d loss / d theta through x_hat = x_t - alpha dE/dx needs the exact double backward (attention included)."""
    torch.manual_seed(0)
    model = EBTDenoiser(tiny_cfg()).double()
    with torch.no_grad():  # leave the zero init (adaLN-Zero, zero head): every path must carry gradient
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x0 = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    params = [p for p in model.parameters() if p.requires_grad]

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same noisy input every call
        return model(x0, training=True).loss

    grads = torch.autograd.grad(loss(), params)
    named = dict(model.named_parameters())
    checks = {"all": [torch.randn_like(p) for p in params]}
    for name in ("energy.trunk.blocks.0.attn.qkv.weight", "energy.trunk.blocks.1.ada.1.weight",
                 "energy.trunk.head.weight", "energy.condition", "thinker.alpha"):
        checks[name] = [torch.randn_like(p) if p is named[name] else torch.zeros_like(p) for p in params]
    eps = 1e-6
    for name, direction in checks.items():
        analytic = sum((g * v).sum() for g, v in zip(grads, direction)).item()
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(eps * v)
        plus = loss().item()
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.sub_(2 * eps * v)
        minus = loss().item()
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(eps * v)
        numeric = (plus - minus) / (2 * eps)
        assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (name, analytic, numeric)
        assert abs(numeric) > 1e-8, f"{name}: no gradient at all"


@pytest.mark.parametrize("steps", [None, 7])
def test_ddim_from_t_with_true_noise_recovers_clean(steps):
    sched = DDPMSchedule(DiffusionConfig())
    x0 = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = sched.t_for_level(0.2)
    assert t == 199
    x_t = sched.q_sample(x0, torch.full((2,), t), noise)
    out = sched.ddim(lambda x, tt: noise, x_t, t, steps=steps)                 # an oracle noise predictor
    assert out.nfe == (t + 1 if steps is None else 7)
    torch.testing.assert_close(out.sample, x0, rtol=0, atol=1e-10)
    # the oracle recovers x0 whatever the timesteps are, so check them directly: evenly spaced, descending to 0
    assert sched.timesteps(t, steps) == (list(range(199, -1, -1)) if steps is None else [199, 166, 133, 100, 66, 33, 0])


def test_schedule_matches_reference_levels():
    sched = DDPMSchedule(DiffusionConfig())
    a, s = sched.signal_noise(torch.tensor([99, 199]), torch.zeros(2, 1, 1, 1))
    assert a.flatten().tolist() == pytest.approx([0.947, 0.812], abs=1e-3)
    assert s.flatten().tolist() == pytest.approx([0.321, 0.584], abs=1e-3)


# ---- models -----------------------------------------------------------------------------------------------------
def test_ebt_counts_forward_and_backward_per_step():
    model = EBTDenoiser(tiny_cfg()).eval()
    res = model.denoise(torch.randn(2, 1, 8, 8), steps=3)
    assert res.sample.shape == (2, 1, 8, 8) and len(res.steps) == 3
    assert res.forwards == [1, 2, 3] and res.backwards == [1, 2, 3]


def test_dit_learned_variance_loss_and_recursion_cost():
    model = DiTDenoiser(tiny_cfg("dit"))
    out = model(torch.rand(4, 1, 8, 8) * 2 - 1)
    out.loss.backward()
    assert torch.isfinite(out.loss) and "vb" in out.metrics
    res = model.denoise(torch.randn(2, 1, 8, 8), t_start=9, recurse=2)
    assert res.forwards == [10, 20, 30] and res.backwards == [0, 0, 0]


# ---- data -------------------------------------------------------------------------------------------------------
def test_load_images_folder_resize_and_arrays(tmp_path):
    write_pngs(tmp_path / "mixed", [(20, 30, "RGB"), (16, 16, "RGB")])
    x = load_images(tmp_path / "mixed", image_size=8)
    assert x.shape == (2, 3, 8, 8) and 0 <= x.min() and x.max() <= 1
    np.save(tmp_path / "a.npy", np.full((5, 12, 12, 3), 255, dtype=np.uint8))   # channels-last uint8
    y = load_images(tmp_path / "a.npy", channels=1)
    assert y.shape == (5, 1, 12, 12) and torch.allclose(y, torch.ones_like(y))
    with pytest.raises(UserError, match="mixed sizes"):
        load_images(tmp_path / "mixed")
