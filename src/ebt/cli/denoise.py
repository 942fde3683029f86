"""`ebt denoise CHECKPOINT --input ... --out DIR` and `ebt eval denoise --ebt A --dit B`: image denoising."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ebt.cli.common import at_least, float_list, int_list
from ebt.errors import UserError
from ebt.images.config import check_noise_level
from ebt.images.data import image_names, load_images
from ebt.media import save_png
from ebt.images.denoisers import load_image_model
from ebt.images.evaluate import Meter, noisy_versions
from ebt.images.report import check_pair, compare, format_table, held_out_images, save_grid, save_plot
from ebt.training.rundir import prepare_output


# ---- ebt denoise ----------------------------------------------------------------------------------------------
def denoise_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder or checkpoint folder of an EBT or DiT denoiser")
    p.add_argument("--input", required=True, help="folder of PNG/JPEG images, one image, or a .npy/.npz/.pt array")
    p.add_argument("--out", required=True, help="folder for NAME_noisy.png and NAME_denoised.png (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing --out, replacing its PNGs")
    p.add_argument("--noise", type=float, help="noise level in (0, 1) to add (default: the training level)")
    p.add_argument("--steps", type=int, help="EBT: gradient steps (default: as trained); DiT: DDIM steps (default t+1)")
    p.add_argument("--recurse", type=int, default=0, help="DiT: re-run the DDIM chain on its own output N more times")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seed of the added noise")


def denoise(args: argparse.Namespace) -> int:
    """Add noise to images and denoise them with an EBT or DiT checkpoint; write PNGs and print PSNRs."""
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    at_least(0, recurse=args.recurse)
    at_least(1, batch_size=args.batch_size)
    if args.noise is not None:
        check_noise_level(args.noise)
    model, cfg = load_image_model(args.checkpoint)
    if args.recurse and cfg.model.kind != "dit":
        raise UserError("--recurse re-runs a DiT's DDIM chain: an EBT checkpoint thinks with --steps instead")
    level = args.noise if args.noise is not None else cfg.diffusion.train_level
    images = load_images(args.input, cfg.model.image_size, cfg.model.channels) * 2 - 1  # (N, C, H, W) in [-1, 1]
    names = image_names(args.input, images.shape[0])
    out_dir = prepare_output(Path(args.out), args.overwrite)   # once every input has been checked
    noisy_all = noisy_versions(images, model.schedule, level, args.seed)
    before, after, cost = Meter(), Meter(), None
    for i in range(0, images.shape[0], args.batch_size):
        clean, noisy = images[i:i + args.batch_size], noisy_all[i:i + args.batch_size]
        res = model.run(noisy, level, {"steps": args.steps, "ddim_steps": args.steps, "recurse": args.recurse})
        cost = (res.forwards[-1], res.backwards[-1])
        before.add(noisy, clean)
        after.add(res.sample, clean)
        for j in range(clean.shape[0]):
            name = names[i + j]
            save_png((noisy[j] + 1) / 2, out_dir / f"{name}_noisy.png")
            save_png((res.sample[j] + 1) / 2, out_dir / f"{name}_denoised.png")
    print(json.dumps({"model": model.kind, "images": images.shape[0], "noise": level,
                      "t": model.schedule.t_for_level(level), "forwards": cost[0], "backwards": cost[1],
                      "nfe": sum(cost), "psnr_noisy": round(before.result()["psnr_image"], 3),
                      "psnr_denoised": round(after.result()["psnr_image"], 3), "out": str(out_dir)}))
    return 0


# ---- ebt eval denoise ------------------------------------------------------------------------------------------
def eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ebt", required=True, help="EBT denoiser checkpoint (run folder or checkpoint folder)")
    p.add_argument("--dit", required=True, help="DiT denoiser checkpoint")
    p.add_argument("--levels", type=float_list, default=[0.1, 0.2],
                   help="noise levels to test (default 0.1,0.2: in and out of the training distribution)")
    p.add_argument("--ebt-steps", type=int_list, default=[3],
                   help="EBT gradient steps: one count, or one per level (e.g. 1,3); every count up to the largest "
                        "is also reported")
    p.add_argument("--dit-recurse", type=int, default=0, help="extra DDIM chains on the DiT's own output")
    p.add_argument("--dit-ddim-steps", type=int_list, default=[5, 10, 25, 50],
                   help="also run the DiT with these fewer, evenly spaced DDIM steps (PSNR-vs-NFE curve)")
    p.add_argument("--data", help="test images (folder/file/array) instead of the EBT run's held-out split")
    p.add_argument("--max-images", type=int, default=0, help="use at most this many test images (0: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seed of the test noise (shared by both models)")
    p.add_argument("--out", default="runs/eval-denoise", help="folder for grid.png, psnr_vs_nfe.png, results.json "
                   "(new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing --out, replacing its files")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def evaluate(args: argparse.Namespace) -> int:
    """Compare an EBT and a DiT denoiser (PSNR, MSE, NFE) at several noise levels."""
    for flag, values in (("--levels", args.levels), ("--ebt-steps", args.ebt_steps),
                         ("--dit-ddim-steps", args.dit_ddim_steps)):
        if not values:
            raise UserError(f"{flag} is empty: give at least one value")
    for level in args.levels:
        check_noise_level(level)
    steps = args.ebt_steps * len(args.levels) if len(args.ebt_steps) == 1 else args.ebt_steps
    if len(steps) != len(args.levels):
        raise UserError(f"--ebt-steps has {len(steps)} counts for {len(args.levels)} levels: give 1 or 1 per level")
    at_least(1, ebt_steps=min(steps), dit_ddim_steps=min(args.dit_ddim_steps), batch_size=args.batch_size)
    at_least(0, dit_recurse=args.dit_recurse, max_images=args.max_images)
    ebt, ecfg = load_image_model(args.ebt, kind="ebt")
    dit, _ = load_image_model(args.dit, kind="dit")
    check_pair(ebt, dit)
    clean = held_out_images(ecfg, args.data, args.max_images)
    out = prepare_output(Path(args.out), args.overwrite)   # once every input has been checked
    with torch.random.fork_rng():
        result, grid = compare(ebt, dit, clean, args.levels, steps, args.dit_recurse, args.dit_ddim_steps,
                               args.batch_size, args.seed)
    save_grid(grid, out / "grid.png")
    save_plot(result, out / "psnr_vs_nfe.png")
    result.update(images=int(clean.shape[0]), image_shape=list(clean.shape[1:]), ebt=str(args.ebt),
                  dit=str(args.dit), grid=str(out / "grid.png"), plot=str(out / "psnr_vs_nfe.png"))
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(format_table(result) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
        for level, h in result["headline"].items():
            print(f"level {level}: EBT {h['ebt']['psnr']:.2f} dB with {h['ebt']['nfe']} NFE vs DiT "
                  f"{h['dit']['psnr']:.2f} dB with {h['dit']['nfe']} NFE (ratio {h['nfe_ratio']:.3f})")
    return 0
