"""Video end to end through the CLI: train the EBT, the Transformer++ and the frame autoencoder, evaluate rollouts
against copy-last-frame, generate a GIF and a strip, train under torchrun (equal to one process), and errors."""
import json

import pytest
import torch

from ebt.cli import main

from test_distributed import losses, rel, torchrun

pytestmark = pytest.mark.usefixtures("one_thread_per_module")   # tiny models: one thread

TINY = ["--model.dim=16", "--model.layers=1", "--model.heads=2", "--model.context=6", "--video.context_frames=3",
        "--data.image_size=8", "--data.digit_size=4", "--data.videos=24", "--video.patch=2", "--train.steps=2",
        "--train.batch_size=4", "--train.eval_batches=1", "--train.progress=false", "--train.threads=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    assert main(["train", "--preset", "video-tiny", *TINY, "--out", str(root / "ebt")]) == 0
    assert main(["train", "--preset", "video-tiny", "--model", "transformer", *TINY, "--out", str(root / "tpp")]) == 0
    return root


def test_eval_video_against_copy_last(runs, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", "video", str(runs / "ebt"), str(runs / "tpp"), "--horizon", "3", "--clips", "4",
                 "--seeds", "2", "--steps", "3", "--json", "--out", str(tmp_path / "ev")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["context"] == 3 and res["horizon"] == 3 and res["clips"] == 2   # 24 // 10 held-out videos
    names = [m["model"] for m in res["models"]]
    assert names == ["ebt (ebt)", "tpp (transformer)", "copy-last (pixels)"]
    ebt, tpp, copy = res["models"]
    assert ebt["nfe_per_frame"] == 2 * 3 + 1 and tpp["nfe_per_frame"] == 1 and copy["nfe_per_frame"] == 0
    assert set(ebt["horizon"]) == {"1", "3"} and len(ebt["energy_per_step"]) == 3
    for m in res["models"]:
        for k in ("latent_smoothl1", "latent_mse", "pixel_mse", "psnr"):
            lo, hi = m["rollout"][k]["ci"]
            assert lo <= m["rollout"][k]["mean"] <= hi
    # pixels encoder: latents are the pixels rearranged, so latent MSE = pixel MSE
    assert copy["rollout"]["latent_mse"]["mean"] == pytest.approx(copy["rollout"]["pixel_mse"]["mean"], rel=1e-6)
    assert "| copy-last (pixels) | t+1 |" in (tmp_path / "ev" / "video.md").read_text()


def test_generate_writes_a_gif_and_a_strip_with_energies(runs, tmp_path, capsys):
    capsys.readouterr()
    assert main(["generate", str(runs / "ebt"), "--frames", "4", "--out", str(tmp_path / "g.gif"),
                 "--samples", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["energies"]) == 4 and res["nfe"] == 4 * 2 * 3 and len(res["pixel_mse"]) == 4
    from PIL import Image
    with Image.open(tmp_path / "g.gif") as gif:
        assert gif.n_frames == 3 + 4 and gif.size == (4 * 8 * 2 + 8, 4 * 8)
    assert (tmp_path / "g.png").stat().st_size > 0
    assert main(["generate", str(runs / "ebt"), "--out", str(tmp_path / "g.gif")]) == 2   # exists: refused
    # a user's clip as a GIF, continued by the Transformer++ past the trained window (the cache is rebuilt)
    from ebt.media import save_gif
    save_gif(torch.rand(5, 1, 12, 12), tmp_path / "in.gif")
    assert main(["generate", str(runs / "tpp"), "--input", str(tmp_path / "in.gif"), "--frames", "8",
                 "--out", str(tmp_path / "t.gif")]) == 0
    assert json.loads(capsys.readouterr().out)["nfe"] == 8


def test_frame_autoencoder_feeds_a_video_run(runs, tmp_path):
    ae = ["--data.image_size=8", "--data.digit_size=4", "--data.videos=64", "--ae.width=4", "--ae.downsample=1", "--train.steps=3",
          "--train.batch_size=8", "--train.eval_batches=1", "--train.progress=false", "--train.threads=1"]
    assert main(["train", "--preset", "frame-ae-tiny", *ae, "--out", str(tmp_path / "ae")]) == 0
    assert main(["train", "--preset", "video-tiny", *TINY, "--video.encoder=autoencoder",
                 f"--video.encoder_path={tmp_path / 'ae'}", "--out", str(tmp_path / "v")]) == 0
    saved = json.loads((tmp_path / "v" / "checkpoint" / "config.json").read_text())["config"]
    assert saved["ae"]["downsample"] == 1 and saved["ae"]["width"] == 4
    from ebt.video.task import load_autoencoder, load_video_model
    model, _ = load_video_model(tmp_path / "v")
    ae_model, _ = load_autoencoder(tmp_path / "ae")
    for name, p in ae_model.state_dict().items():   # the frozen encoder travels inside the video checkpoint
        if name != "scale":
            assert torch.equal(model.encoder.state_dict()[name], p)
    assert model.encoder.scale.item() != 1.0
    assert main(["train", "--preset", "video-tiny", *TINY, "--video.encoder=autoencoder",
                 f"--video.encoder_path={runs / 'ebt'}", "--out", str(tmp_path / "w")]) == 2


def test_torchrun_video_training_matches_one_process(tmp_path):
    args = ["--preset", "video-tiny", *[a for a in TINY if not a.startswith(("--train.steps", "--train.batch_size"))],
            "--train.steps=3", "--train.log_every=1"]
    assert main(["train", *args, "--train.batch_size=4", "--out", str(tmp_path / "one")]) == 0
    torchrun(["-m", "ebt", "train", *args, "--train.batch_size=2", "--out", str(tmp_path / "ddp")], tmp_path)
    ref, got = losses(tmp_path / "one"), losses(tmp_path / "ddp")
    assert sorted(got) == [1, 2, 3] and max(rel(got[s], ref[s]) for s in ref) < 1e-4, (ref, got)


def test_mp4_without_the_ffmpeg_plugin_is_one_line(tmp_path, monkeypatch, capsys):
    """Without the `video` extra an MP4 is refused in one line that names the extra (exit 2, nothing written)."""
    import ebt.media

    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    monkeypatch.setattr(ebt.media, "ffmpeg_available", lambda: False)
    capsys.readouterr()
    assert main(["train", "--preset", "video-tiny", *TINY, "--data", str(tmp_path / "clip.mp4"),
                 "--out", str(tmp_path / "run")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "energy-based-transformers[video]" in err[0] and not (tmp_path / "run").exists()
