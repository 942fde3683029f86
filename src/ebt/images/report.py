"""`ebt eval denoise`: the EBT-vs-DiT comparison table, a PNG grid (noisy / EBT / DiT / clean) and a
PSNR-vs-NFE plot."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ebt.errors import UserError
from ebt.images.evaluate import evaluate_curve, noisy_row, noisy_versions


def check_pair(ebt, dit) -> None:
    """Both models must read the same images and share one noise schedule, or the comparison means nothing."""
    a, b = ebt.cfg, dit.cfg
    if (a.model.image_size, a.model.channels) != (b.model.image_size, b.model.channels):
        raise UserError(f"the EBT works on {a.model.channels}x{a.model.image_size}px images and the DiT on "
                        f"{b.model.channels}x{b.model.image_size}px: train both on the same data")
    sa, sb = a.diffusion, b.diffusion
    if (sa.schedule_steps, sa.beta_start, sa.beta_end) != (sb.schedule_steps, sb.beta_start, sb.beta_end):
        raise UserError("the two checkpoints use different noise schedules (diffusion.schedule_steps/beta_*): "
                        "train both with the same diffusion settings")


def compare(ebt, dit, clean: Tensor, levels: list[float], ebt_steps: list[int], dit_recurse: int = 0,
            dit_ddim_steps: Optional[list[int]] = None, batch_size: int = 64, seed: int = 0,
            grid_n: int = 8) -> tuple[dict, dict]:
    """Rows for every (model, level, setting, curve point), a per-level headline and the images for the grid.

    Headline per level: the EBT after `ebt_steps[i]` steps (one count per level) against the DiT's full DDIM
    chain from t (t+1 forward passes per chain, `dit_recurse` extra chains). The EBT curve always runs to
    max(ebt_steps) so every step count is in the table. Every model sees the same noisy inputs (seeded)."""
    rows, headline, grid = [], {}, {}
    for level, n_steps in zip(levels, ebt_steps):
        t = ebt.schedule.t_for_level(level)
        noisy_r = noisy_row(clean, ebt.schedule, level, batch_size, seed)
        rows.append(noisy_r)
        ebt_rows, _ = evaluate_curve(ebt, clean, level, {"steps": max(ebt_steps)}, batch_size, seed)
        dit_rows, dit_imgs = evaluate_curve(dit, clean, level, {"ddim_steps": t + 1, "recurse": dit_recurse},
                                            batch_size, seed, grid_n)
        rows += ebt_rows + dit_rows
        for s in sorted(set(dit_ddim_steps or [])):
            if s < t + 1:  # fewer, evenly spaced DDIM steps: the DiT's own PSNR-vs-NFE trade-off
                rows += evaluate_curve(dit, clean, level, {"ddim_steps": s, "recurse": 0}, batch_size, seed)[0]
        e, d = ebt_rows[n_steps - 1], dit_rows[-1]
        noisy = noisy_versions(clean, ebt.schedule, level, seed)[:grid_n]
        with torch.no_grad():  # the grid shows the headline setting
            ebt_imgs = ebt.denoise(noisy, steps=n_steps).sample
        headline[str(level)] = {
            "t": t, "ebt": {k: e[k] for k in ("psnr", "psnr_image", "mse", "nfe", "forwards", "backwards", "steps")},
            "dit": {k: d[k] for k in ("psnr", "psnr_image", "mse", "nfe", "forwards", "recurse")},
            "noisy_psnr": noisy_r["psnr"],
            "ebt_wins": e["psnr"] > d["psnr"], "nfe_ratio": e["nfe"] / d["nfe"],
            "forward_ratio": e["forwards"] / d["forwards"]}
        grid[level] = [("noisy", noisy), ("EBT", ebt_imgs), ("DiT", dit_imgs), ("clean", clean[:grid_n])]
    return {"rows": rows, "headline": headline}, grid


def format_table(result: dict) -> str:
    """A markdown table of every row."""
    head = "| model | level (t) | setting | forwards | input-grad backwards | NFE | PSNR | PSNR/img | MSE |"
    lines = [head, "|" + "---|" * 9]
    for r in result["rows"]:
        if r["model"] == "ebt":
            setting = f"{r['steps']} step(s)"
        elif r["model"] == "dit":
            setting = f"DDIM {r['ddim_steps']} steps" + (f", {r['recurse']} recursion(s)" if r["recurse"] else "")
        else:
            setting = "input"
        lines.append(f"| {r['model']} | {r['level']} ({r['t']}) | {setting} | {r['forwards']} | {r['backwards']} | "
                     f"{r['nfe']} | {r['psnr']:.2f} | {r['psnr_image']:.2f} | {r['mse']:.1f} |")
    return "\n".join(lines)


def _show(img: Tensor):
    """(C, H, W) in [-1, 1] -> array for imshow."""
    x = ((img.float() + 1) / 2).clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def save_grid(grid: dict, path: Path) -> None:
    """Rows noisy / EBT / DiT / clean for each level, one column per example."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{name} ({level})", imgs) for level, group in grid.items() for name, imgs in group]
    cols = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.2 * cols + 1.2, 1.2 * len(rows)), squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.imshow(_show(imgs[j]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_plot(result: dict, path: Path) -> None:
    """PSNR (pooled) against NFE on a log axis, one panel per noise level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({r["level"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 4), squeeze=False)
    for ax, level in zip(axes[0], levels):
        rows = [r for r in result["rows"] if r["level"] == level]
        ebt = sorted((r["nfe"], r["psnr"]) for r in rows if r["model"] == "ebt")
        dit = sorted((r["nfe"], r["psnr"]) for r in rows if r["model"] == "dit")
        ax.plot(*zip(*ebt), "o-", label="EBT (steps; NFE = forward + input-grad)")
        ax.plot(*zip(*dit), "s-", label="DiT (DDIM steps / recursions)")
        noisy = next(r["psnr"] for r in rows if r["model"] == "noisy")
        ax.axhline(noisy, color="gray", ls="--", label="noisy input")
        ax.set_xscale("log")
        ax.set_xlabel("function evaluations (NFE)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"noise level {level} (t = {rows[0]['t']})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def held_out_images(cfg, data: Optional[str], max_images: int) -> Tensor:
    """The EBT run's own held-out split, or a user's images resized to the model's size, in [-1, 1]."""
    from ebt.images.data import load_dataset, load_images

    if data is None:
        clean = load_dataset(cfg.data)[1].images
    else:
        clean = load_images(data, cfg.model.image_size, cfg.model.channels) * 2 - 1
    return clean[:max_images] if max_images else clean
