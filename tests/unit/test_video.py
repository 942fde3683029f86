"""Video: frame encoders' round trips, the continuous descent's exact gradients (finite differences, gradgradcheck),
KV-cached rollouts equal to recomputed ones, the moving digits and the readers of user videos, and their errors."""
import importlib.util

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from ebt.config import ModelConfig, ThinkConfig
from ebt.errors import UserError
from ebt.models.ar_ebt import ContextEnergy
from ebt.models.frames import FrameEnergyModel
from ebt.thinking import ThinkOptions
from ebt.video.config import AutoencoderConfig, VideoConfig, VideoDataConfig, VideoRunConfig
from ebt.video.data import cut_clips, load_clips, load_videos, moving_digits
from ebt.video.encoders import ConvAutoencoder, PixelEncoder, SDVAEEncoder
from ebt.video.models import CopyLast, rollout
from ebt.video.task import build_video_model

from conftest import write_pngs


def tiny_run(kind="ebt", conditioning="time_embed", start="noise", landscapes=2, **think) -> VideoRunConfig:
    return VideoRunConfig(model=ModelConfig(kind=kind, vocab_size=0, dim=16, layers=2, heads=2, context=6,
                                            conditioning=conditioning),
                          think=ThinkConfig(landscapes=landscapes, alpha=2.0, **think),
                          video=VideoConfig(patch=2, start=start, context_frames=3),
                          data=VideoDataConfig(image_size=8, channels=1, digit_size=4, videos=8))


def tiny_model(kind="ebt", dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return build_video_model(tiny_run(kind, **kw)).to(dtype).eval()


# ---- encoders ---------------------------------------------------------------------------------------------------
def test_pixel_encoder_is_exactly_invertible():
    enc = PixelEncoder(3, 8, 2)
    x = torch.rand(5, 3, 8, 8) * 2 - 1
    z = enc.encode(x)
    assert z.shape == (5, enc.latent_dim) == (5, 3 * 8 * 8)
    assert torch.equal(enc.decode(z), x)
    assert torch.equal(z.view(5, 12, 4, 4)[:, :, 1, 2].view(5, 3, 2, 2), x[:, :, 2:4, 4:6].permute(0, 1, 2, 3))


def test_autoencoder_shapes_scale_and_frozen_training_mode():
    enc = ConvAutoencoder(AutoencoderConfig(width=4, downsample=2, latent_channels=3), 1, 16)
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    assert enc.latent_shape == (3, 4, 4) and enc.encode(x).shape == (6, 48)
    enc.calibrate(x)
    assert enc.encode(x).std().item() == pytest.approx(1.0, rel=1e-4)
    assert enc.decode(enc.encode(x)).shape == x.shape
    enc.freeze().train()
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers is not installed")
def test_sd_vae_encoder_reads_a_local_diffusers_folder(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                  norm_num_groups=8, sample_size=16).save_pretrained(tmp_path / "vae")
    enc = SDVAEEncoder(str(tmp_path / "vae"), 1, 16)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert enc.latent_shape == (4, 8, 8)
    z = enc.encode(x)
    assert z.shape == (2, 256) and enc.decode(z).shape == x.shape
    assert list(enc.state_dict()) == ["scale"]                # the VAE's weights stay in its folder
    enc.double()
    assert next(enc.vae.parameters()).dtype == torch.float64 and enc.encode(x.double()).dtype == torch.float64
    with pytest.raises(UserError, match="not a diffusers AutoencoderKL folder"):
        SDVAEEncoder(str(tmp_path), 1, 16)


# ---- exact gradients of the continuous descent ------------------------------------------------------------------
@pytest.mark.parametrize("conditioning", ["time_embed", "none", "adaln", "pred_embed"])
def test_energy_gradients_are_exact_wrt_candidates(conditioning):
    torch.manual_seed(0)
    energy = FrameEnergyModel(ModelConfig(vocab_size=0, dim=8, layers=2, heads=2, context=3,
                                          conditioning=conditioning), latent_dim=5, num_landscapes=2).double()
    fn = ContextEnergy(energy, torch.randn(1, 2, 5, dtype=torch.float64))
    z = torch.randn(1, 2, 5, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda q: fn(q, 1), (z,))
    assert gradgradcheck(lambda q: fn(q, 1), (z,))


def test_training_loss_through_the_descent_matches_finite_differences():
    """The loss after a full (undetached) two-step descent, differentiated in weights and alpha: the
    second-order path through dE/dz is exact."""
    model = tiny_model(conditioning="time_embed", detach=False).train()
    clips = torch.rand(1, 4, 1, 8, 8, dtype=torch.float64) * 2 - 1
    w = model.energy.transformer.final_layer.weight                                 # (1, 16)

    def loss(weight, alpha):
        with torch.nn.utils.stateless._reparametrize_module(
                model, {"energy.transformer.final_layer.weight": weight, "thinker.alpha": alpha}):
            torch.manual_seed(3)
            return model(clips, training=True).loss

    assert gradcheck(loss, (w.detach().clone().requires_grad_(True),
                            model.thinker.alpha.detach().clone().requires_grad_(True)), atol=1e-6)


def test_s1_training_backpropagates_into_every_trained_parameter_but_not_the_encoder():
    model = tiny_model(dtype=torch.float32).train()
    model(torch.rand(2, 7, 1, 8, 8) * 2 - 1).loss.backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(model.get_parameter(n).grad is not None for n in trained if "time_embeddings" not in n)
    assert not any(n.startswith("encoder") for n in trained)


# ---- generation -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,conditioning,samples", [("ebt", "time_embed", 1), ("ebt", "adaln", 2),
                                                        ("ebt", "pred_embed", 3), ("transformer", "none", 1)])
def test_cached_rollout_equals_recomputing_the_context(kind, conditioning, samples):
    """5 frames after 3: the window (6) fills and then slides, so the cache is extended and later rebuilt."""
    model = tiny_model(kind, conditioning=conditioning)
    ctx = torch.randn(2, 3, model.encoder.latent_dim, dtype=torch.float64)
    opts = ThinkOptions(samples=samples) if kind == "ebt" else None
    runs = [rollout(model, ctx, 5, opts, torch.Generator().manual_seed(0), use_cache=c) for c in (True, False)]
    torch.testing.assert_close(runs[0].latents, runs[1].latents, rtol=1e-9, atol=1e-9)
    if kind == "ebt":
        torch.testing.assert_close(runs[0].energies, runs[1].energies, rtol=1e-9, atol=1e-9)
    assert runs[0].nfe == runs[1].nfe == (5 * samples * (len(model.thinker.schedule(False)) + 1) if kind == "ebt" else 5)


@pytest.mark.parametrize("conditioning", ["time_embed", "adaln"])
def test_one_step_prediction_equals_the_teacher_forced_descent(conditioning):
    """The rollout's next frame is the last position of the training layout (every position descended at once,
    from the same start at that position)."""
    model = tiny_model(start="last", conditioning=conditioning)
    ctx = torch.randn(1, 4, model.encoder.latent_dim, dtype=torch.float64)
    step = model.next_frame(ctx, None, None, torch.Generator().manual_seed(5))
    z_last = model.initial_candidates(ctx[:, -1:], 1, torch.Generator().manual_seed(5))            # (1, 1, F)
    z0 = torch.cat([model.initial_candidates(ctx[:, :-1], 3, torch.Generator().manual_seed(9)), z_last], dim=1)
    with torch.no_grad():
        full = model.thinker.descend(ContextEnergy(model.energy, ctx), z0, model.thinker.schedule(False)).final
    torch.testing.assert_close(step.latent, full[:, -1])


def test_best_of_n_keeps_the_lowest_final_energy():
    """The N candidates of each context, descended and scored independently: the pick is their lowest energy."""
    model = tiny_model()
    ctx = torch.randn(2, 3, model.encoder.latent_dim, dtype=torch.float64)
    best = model.next_frame(ctx, None, ThinkOptions(samples=4), torch.Generator().manual_seed(0))
    z0 = model.initial_candidates(ctx[:, -1:].repeat_interleave(4, 0), 1, torch.Generator().manual_seed(0))
    fn = ContextEnergy(model.energy, ctx.repeat_interleave(4, 0), start=2)
    schedule = model.thinker.schedule(False)
    with torch.no_grad():
        final = model.thinker.descend(fn, z0, schedule).final                                       # (8, 1, F)
        energies = model.thinker.final_energy(fn, final, schedule[-1]).view(2, 4)
    pick = energies.argmin(1)
    torch.testing.assert_close(best.energy, energies.min(1).values)
    torch.testing.assert_close(best.latent, final.view(2, 4, -1)[torch.arange(2), pick])
    assert best.nfe == 4 * 3 and len(set(energies.flatten().tolist())) == 8   # the candidates differ
    with pytest.raises(UserError, match="EBT checkpoints only"):
        rollout(tiny_model("transformer"), ctx, 1, ThinkOptions(samples=2))


def test_copy_last_repeats_the_last_frame():
    ctx = torch.randn(2, 3, 10)
    out = rollout(CopyLast(6), ctx, 4)
    assert torch.equal(out.latents, ctx[:, -1:].expand(2, 4, 10)) and out.nfe == 0


# ---- data -------------------------------------------------------------------------------------------------------
def test_seedless_configs_group_training_seeds_only():
    from ebt.video.evaluate import seedless

    a, b, c = tiny_run(), tiny_run(), tiny_run(start="last")
    b.train.seed, b.train.out_dir = 3, "elsewhere"
    assert seedless(a) == seedless(b) != seedless(c)


def test_moving_digits_are_deterministic_bounded_and_held_out_differs():
    cfg = VideoDataConfig(image_size=16, digit_size=6, digits=2, speed=3.0, seed=4)
    a, b = moving_digits(3, 10, cfg), moving_digits(3, 10, cfg)
    held = moving_digits(3, 10, cfg, held_out=True)
    assert torch.equal(a, b) and a.shape == (3, 10, 1, 16, 16)
    assert 0 <= a.min() and a.max() <= 1 and not torch.equal(a, held)
    assert (a[:, 1:] - a[:, :-1]).abs().sum() > 0   # they move


def test_fast_digits_bounce_any_number_of_times_and_a_full_canvas_holds_still():
    fast = moving_digits(4, 12, VideoDataConfig(image_size=12, digit_size=6, speed=40.0))
    assert fast.shape == (4, 12, 1, 12, 12) and (fast.flatten(2).sum(-1) > 0).all()   # digits stay on the canvas
    still = moving_digits(2, 5, VideoDataConfig(image_size=8, digit_size=8, speed=2.0))
    assert torch.equal(still[:, :1].expand_as(still), still)


def test_clips_are_cut_at_stride_and_hop_and_short_videos_are_refused():
    video = torch.arange(20.0).view(20, 1, 1, 1).expand(20, 1, 2, 2)
    clips = cut_clips("v", video, 4, stride=2, hop=3)
    assert clips.shape == (3, 4, 1, 2, 2) and clips[1, :, 0, 0, 0].tolist() == [6, 8, 10, 12]
    with pytest.raises(UserError, match="fewer than a clip's 16"):
        cut_clips("v", video[:10], 16)


def test_readers_gif_frame_folders_arrays_and_mp4_agree(tmp_path):
    from ebt.media import save_gif

    frames = moving_digits(1, 6, VideoDataConfig(image_size=16, digit_size=6))[0]          # (6, 1, 16, 16)
    save_gif(frames, tmp_path / "a.gif")
    (tmp_path / "b").mkdir()
    from ebt.media import save_png
    for i, f in enumerate(frames):
        save_png(f, tmp_path / "b" / f"{i:03d}.png")
    np.save(tmp_path / "c.npy", (frames[None, :, 0].numpy() * 255).round().astype(np.uint8))   # (1, F, H, W)
    cfg = VideoDataConfig(path="given", image_size=0, channels=1)
    want = (frames * 255).round() / 255
    for path in ("a.gif", "b", "c.npy"):
        (name, got), = load_videos(tmp_path / path, cfg)
        torch.testing.assert_close(got, want, atol=1 / 255 + 1e-6, rtol=0)
    if importlib.util.find_spec("imageio_ffmpeg") is not None:   # lossy: compare loosely
        import imageio.v3 as iio
        rgb = (frames.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
        iio.imwrite(tmp_path / "d.mp4", rgb, fps=4, codec="libx264", macro_block_size=1)
        (_, got), = load_videos(tmp_path / "d.mp4", cfg)
        assert got.shape == frames.shape and (got - frames).abs().mean() < 0.05
    train, val = load_clips(VideoDataConfig(path=str(tmp_path / "b"), image_size=8, channels=1, val_fraction=0.3), 3)
    assert train.clips.shape[1:] == (3, 1, 8, 8) and len(val) == 1


def test_arrays_channels_first_or_last_and_alpha(tmp_path):
    frames = torch.rand(2, 5, 3, 8, 8)
    np.save(tmp_path / "first.npy", frames.numpy())                                  # (N, F, C, H, W)
    np.save(tmp_path / "last.npy", frames.permute(0, 1, 3, 4, 2).numpy())             # (N, F, H, W, C)
    grey_alpha = torch.cat([frames[:, :, :1], torch.ones(2, 5, 1, 8, 8)], dim=2)     # (N, F, 2, H, W)
    np.save(tmp_path / "alpha.npy", grey_alpha.numpy())
    cfg = VideoDataConfig(path="given", image_size=0, channels=0)
    for name in ("first", "last"):
        got = torch.stack([v for _, v in load_videos(tmp_path / f"{name}.npy", cfg)])
        torch.testing.assert_close(got, frames)
    got = torch.stack([v for _, v in load_videos(tmp_path / "alpha.npy", cfg)])
    torch.testing.assert_close(got, frames[:, :, :1])
    for shape, words in (((0, 5, 8, 8), "empty array"), ((5, 8, 8, 1), "looks like one video"),
                         ((2, 5, 3, 8, 3), "cannot tell its channel axis")):
        np.save(tmp_path / "bad.npy", np.zeros(shape, dtype=np.float32))
        with pytest.raises(UserError, match=words):
            load_videos(tmp_path / "bad.npy", cfg)


def test_a_single_video_stays_split_where_training_split_it(tmp_path):
    from ebt.video.data import heldout_clips

    np.save(tmp_path / "one.npy", np.random.rand(1, 40, 8, 8).astype(np.float32))
    cfg = VideoDataConfig(path=str(tmp_path / "one.npy"), image_size=0, channels=1, val_fraction=0.25)
    train, val = load_clips(cfg, 5)
    seen = {tuple(c.flatten()[:4].tolist()) for c in train.clips.flatten(0, 1)}
    longer = heldout_clips(cfg, 8, train_length=5)               # longer evaluation clips: still unseen frames
    assert not seen & {tuple(c.flatten()[:4].tolist()) for c in longer.clips.flatten(0, 1)}


def test_bad_videos_are_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "mixed").mkdir()
    write_pngs(tmp_path / "mixed" / "v1", [(8, 8, "L")] * 3)
    write_pngs(tmp_path / "mixed" / "v2", [(12, 12, "L")] * 3)
    with pytest.raises(UserError, match="mixed frame sizes"):
        load_videos(tmp_path / "mixed", VideoDataConfig(path="given", image_size=0, channels=1))
    (tmp_path / "broken.gif").write_bytes(b"GIF89a not really")
    with pytest.raises(UserError, match="cannot read video"):
        load_videos(tmp_path / "broken.gif", VideoDataConfig())
    (tmp_path / "x.mp4").write_bytes(b"\x00" * 64)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else True)
    with pytest.raises(UserError, match="needs imageio's ffmpeg plugin"):
        load_videos(tmp_path / "x.mp4", VideoDataConfig())


def test_summary_across_checkpoints_is_a_t_interval_of_their_means():
    from ebt.video.evaluate import METRICS, across_checkpoints

    def row(kind, v):
        m = {k: {"mean": v} for k in METRICS + ("psnr",)}
        return {"kind": kind, "group": kind, "nfe_per_frame": 3, "horizon": {1: m}, "rollout": m}

    other = {**row("ebt", 9.0), "group": "ebt with another setting"}
    out = across_checkpoints([row("ebt", 1.0), row("ebt", 2.0), other, row("ebt", 3.0), row("transformer", 5.0)])
    assert [o["model"] for o in out] == ["ebt: 3 checkpoints"]   # one transformer, one other setting: no summary
    got = out[0]["rollout"]["pixel_mse"]
    assert got["mean"] == 2.0 and got["ci"] == pytest.approx([2.0 - 4.302653 / 3 ** 0.5, 2.0 + 4.302653 / 3 ** 0.5])


def test_the_system_2_recipe_trains_on_frames():
    """S2 (no detach, truncation, random step counts and step sizes, Langevin noise) on continuous candidates: a
    finite loss on the last step whose gradient reaches the weights."""
    model = tiny_model(dtype=torch.float32, detach=False, truncate=True, langevin_std=0.5, rand_alpha_scale=2.0,
                       rand_steps=2, rand_steps_min=2, landscapes=1).train()
    out = model(torch.rand(3, 7, 1, 8, 8) * 2 - 1)
    out.loss.backward()
    assert torch.isfinite(out.loss) and 2 <= out.metrics["steps"] <= 3
    assert model.energy.frame_to_embed.weight.grad.abs().sum() > 0
