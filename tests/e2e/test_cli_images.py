"""Image denoising end to end through the CLI: train both models, denoise, compare, resume, and one-line errors."""
import json

import pytest

from ebt.cli import main

from conftest import write_pngs


pytestmark = pytest.mark.usefixtures("one_thread_per_module")   # tiny models: one thread


def tiny_train_args(preset: str, out, *extra: str) -> list[str]:
    return ["train", "--preset", preset, "--out", str(out), "--data.embedded=digits", "--data.image_size=0",
            "--data.max_images=48", "--model.patch=2", "--model.dim=16", "--model.layers=1", "--model.heads=2",
            "--train.steps=2", "--train.batch_size=8", "--train.eval_batches=1", "--train.progress=false",
            "--train.threads=1", *extra]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A 2-step EBT and a 2-step DiT trained through `ebt train` on 8x8 digits."""
    root = tmp_path_factory.mktemp("img")
    assert main(tiny_train_args("denoise-tiny", root / "ebt")) == 0
    assert main(tiny_train_args("dit-tiny", root / "dit")) == 0
    return root / "ebt", root / "dit"


# ---- CLI --------------------------------------------------------------------------------------------------------
def test_train_denoise_eval_and_resume(checkpoints, tmp_path, capsys):
    ebt_dir, dit_dir = checkpoints
    cfg = json.loads((ebt_dir / "checkpoint" / "config.json").read_text())["config"]
    assert cfg["task"] == "denoise" and cfg["model"]["image_size"] == 8 and cfg["model"]["channels"] == 1
    capsys.readouterr()
    write_pngs(tmp_path / "in", [(8, 8, "L"), (8, 8, "L")])
    assert main(["denoise", str(ebt_dir), "--input", str(tmp_path / "in"), "--noise", "0.2", "--steps", "3",
                 "--out", str(tmp_path / "out")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["nfe"] == 6 and res["t"] == 199
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "img0_denoised.png", "img0_noisy.png", "img1_denoised.png", "img1_noisy.png"]
    assert main(["eval", "denoise", "--ebt", str(ebt_dir), "--dit", str(dit_dir), "--max-images", "6",
                 "--dit-ddim-steps", "5", "--out", str(tmp_path / "ev"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    h = out["headline"]["0.2"]
    assert h["ebt"]["nfe"] == 6 and h["dit"]["nfe"] == 200 and h["dit"]["forwards"] == 200
    assert (tmp_path / "ev" / "grid.png").is_file() and (tmp_path / "ev" / "psnr_vs_nfe.png").is_file()
    # the text commands refuse image checkpoints with one line
    assert main(["eval", str(ebt_dir), "--json"]) == 2
    assert "holds a denoise model" in capsys.readouterr().err
    # resume continues the image run with its own (resolved) config, from step 2 to step 3
    assert main(tiny_train_args("denoise-tiny", ebt_dir, "--resume", "--train.steps=3")) == 0
    saved = json.loads((ebt_dir / "checkpoint" / "config.json").read_text())
    assert saved["meta"]["step"] == 3 and saved["config"]["model"]["image_size"] == 8
    steps = [json.loads(line)["step"] for line in (ebt_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == sorted(steps) and steps[-1] == 3 and 3 not in steps[:-1]


@pytest.mark.parametrize("case", ["mixed_sizes", "mixed_channels", "empty", "not_divisible"])
def test_bad_training_images_exit_2(tmp_path, capsys, case):
    folder = tmp_path / "data"
    specs = {"mixed_sizes": [(8, 8, "RGB"), (12, 12, "RGB")], "mixed_channels": [(8, 8, "RGB"), (8, 8, "L")],
             "empty": [], "not_divisible": [(10, 10, "RGB")] * 3}[case]
    write_pngs(folder, specs)
    (folder / "notes.txt").write_text("not an image")
    rc = main(["train", "--preset", "denoise-tiny", "--data", str(folder), "--data.image_size=0",
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert {"mixed_sizes": "mixed sizes", "mixed_channels": "mixed channel", "empty": "no PNG/JPEG",
            "not_divisible": "not divisible by the patch size"}[case] in err


@pytest.mark.parametrize("noise", ["1.5", "0", "-0.1"])
def test_noise_level_outside_unit_interval_exit_2(checkpoints, tmp_path, capsys, noise):
    write_pngs(tmp_path / "in", [(8, 8, "L")])
    rc = main(["denoise", str(checkpoints[0]), "--input", str(tmp_path / "in"), f"--noise={noise}",
               "--out", str(tmp_path / "out")])
    assert rc == 2 and "outside (0, 1)" in capsys.readouterr().err
    assert main(["eval", "denoise", "--ebt", str(checkpoints[0]), "--dit", str(checkpoints[1]),
                 f"--levels={noise}"]) == 2


def test_bad_image_config_exit_2(tmp_path, capsys):
    assert main(["train", "--preset", "denoise-tiny", "--data.image_size=30", "--out", str(tmp_path / "r")]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert main(["train", "--preset", "dit-tiny", "--diffusion.train_level=1.2", "--out", str(tmp_path / "r")]) == 2
