"""Held-out video evaluation: autoregressive rollouts of every model (and copy-last-frame) after `context` frames,
scored per horizon step in latents (SmoothL1 as the reference, MSE) and in pixels after decoding (MSE, PSNR), with
network forward passes per frame (NFE), several noise seeds and 95% bootstrap intervals over clips.

PSNR is that of the mean pixel MSE over clips (pooled, as the reference's image metric), not a mean of per-clip
PSNRs, which clips where nothing moves would dominate (copy-last-frame is exact on them)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ebt.config import to_dict
from ebt.errors import UserError
from ebt.thinking import ThinkOptions
from ebt.video.models import CopyLast, rollout

METRICS = ("latent_smoothl1", "latent_mse", "pixel_mse")


@dataclass(kw_only=True)
class VideoEvalSettings:
    context: int = 5
    """Frames given before generating (the reference's test setting)."""
    horizon: int = 5
    """Frames generated after them."""
    clips: int = 64
    """Held-out clips evaluated (at most)."""
    seeds: int = 3
    """Noise seeds per clip for models that draw noise (EBT candidates); averaged per clip."""
    batch_size: int = 32
    options: Optional[ThinkOptions] = None
    """Thinking options for EBTs (None: the trained schedule)."""

    def __post_init__(self) -> None:
        for name in ("context", "horizon", "clips", "seeds", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


@dataclass
class Scores:
    """Per-clip scores of one model: metric -> (clips, horizon), and the NFE per generated frame."""
    per_clip: dict[str, np.ndarray] = field(default_factory=dict)
    nfe: float = 0.0
    energies: Optional[np.ndarray] = None
    """(clips, horizon) final energies of the generated frames (EBT)."""


def bootstrap_mean(values: np.ndarray, reps: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of the mean of values (N,) (resampling clips)."""
    if len(values) < 2:
        return [float(values.mean())] * 2
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(reps, len(values)))].mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def psnr_db(mse: float) -> float:
    """PSNR of frames in [-1, 1] measured as images in [0, 1] (MSE / 4, peak 1)."""
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def scored(values: np.ndarray) -> dict:
    """{"mean", "ci"} of per-clip values (N,)."""
    return {"mean": float(values.mean()), "ci": bootstrap_mean(values)}


def with_psnr(metrics: dict) -> dict:
    """Add the pooled PSNR (of the mean pixel MSE; its interval from the MSE's, reversed)."""
    mse = metrics["pixel_mse"]
    return {**metrics, "psnr": {"mean": psnr_db(mse["mean"]), "ci": [psnr_db(mse["ci"][1]), psnr_db(mse["ci"][0])]}}


@torch.no_grad()
def score_rollouts(model, encoder, clips: Tensor, s: VideoEvalSettings) -> Scores:
    """Roll `model` out on clips (N, F, C, H, W) in [-1, 1] and score every clip and horizon step."""
    sums: dict[str, Tensor] = {}
    energies, nfe, seeds = [], 0.0, s.seeds if getattr(model, "can_think", False) else 1
    for seed in range(seeds):
        gen = torch.Generator(device=clips.device).manual_seed(seed)
        torch.manual_seed(seed)   # Langevin noise (--langevin) draws from the global generator
        rows, erows = {k: [] for k in METRICS}, []
        for i in range(0, len(clips), s.batch_size):
            batch = clips[i:i + s.batch_size]
            latents = encoder.encode(batch.flatten(0, 1)).unflatten(0, batch.shape[:2])          # (B, F, Z)
            truth = latents[:, s.context:s.context + s.horizon]
            out = rollout(model, latents[:, :s.context], s.horizon, s.options if model.can_think else None, gen)
            pixels = encoder.decode(out.latents.flatten(0, 1)).view(*out.latents.shape[:2], *batch.shape[2:])
            target = batch[:, s.context:s.context + s.horizon]
            pixel_mse = F.mse_loss(pixels, target, reduction="none").flatten(2).mean(-1)         # (B, H)
            rows["latent_smoothl1"].append(F.smooth_l1_loss(out.latents, truth, reduction="none").mean(-1))
            rows["latent_mse"].append(F.mse_loss(out.latents, truth, reduction="none").mean(-1))
            rows["pixel_mse"].append(pixel_mse)
            if out.energies is not None:
                erows.append(out.energies)
            nfe += out.nfe / s.horizon / math.ceil(len(clips) / s.batch_size) / seeds
        for k, v in rows.items():
            sums[k] = sums.get(k, 0) + torch.cat(v).double() / seeds
        if erows:
            energies.append(torch.cat(erows).double().cpu().numpy())
    return Scores({k: v.cpu().numpy() for k, v in sums.items()}, nfe,
                  np.mean(energies, 0) if energies else None)


def summarise(name: str, scores: Scores, steps: list[int]) -> dict:
    """{"model", "nfe", "horizon": {h: {metric: {"mean", "ci"}}}, "rollout": {metric: {"mean", "ci"}}} where
    `rollout` averages the whole horizon per clip first."""
    out = {"model": name, "nfe_per_frame": scores.nfe, "horizon": {}, "rollout": {}}
    for h in steps:
        out["horizon"][h] = with_psnr({k: scored(v[:, h - 1]) for k, v in scores.per_clip.items()})
    out["rollout"] = with_psnr({k: scored(v.mean(1)) for k, v in scores.per_clip.items()})
    if scores.energies is not None:
        out["energy_per_step"] = [float(e) for e in scores.energies.mean(0)]
    return out


def across_checkpoints(rows: list[dict]) -> list[dict]:
    """Per configuration evaluated with several checkpoints that differ only in their training seed (`row["group"]`):
    each metric's mean over them with a 95% t-interval over checkpoints, at t+1, t+H and over the rollout."""
    from scipy import stats

    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        mine = [r for r in rows if r["group"] == group]
        kind = mine[0]["kind"]
        if len(mine) < 2:
            continue
        t = float(stats.t.ppf(0.975, len(mine) - 1))

        def agg(pick) -> dict:
            v = np.array([pick(r) for r in mine])
            half = t * v.std(ddof=1) / math.sqrt(len(v))
            return {"mean": float(v.mean()), "ci": [float(v.mean() - half), float(v.mean() + half)]}

        horizon = {h: {k: agg(lambda r, h=h, k=k: r["horizon"][h][k]["mean"]) for k in METRICS + ("psnr",)}
                   for h in mine[0]["horizon"]}
        out.append({"model": f"{kind}: {len(mine)} checkpoints", "kind": kind, "checkpoints": len(mine),
                    "nfe_per_frame": mine[0]["nfe_per_frame"], "horizon": horizon,
                    "rollout": {k: agg(lambda r, k=k: r["rollout"][k]["mean"]) for k in METRICS + ("psnr",)}})
    return out


def seedless(cfg) -> str:
    """A run's configuration without what differs between training seeds of one setting (seed, folder, threads)."""
    flat = json.loads(json.dumps(to_dict(cfg)))
    for key in ("seed", "out_dir", "threads", "progress", "device"):
        flat["train"].pop(key, None)
    return json.dumps(flat, sort_keys=True)


def evaluate_video(models: dict[str, object], clips: Tensor, s: VideoEvalSettings) -> dict:
    """Every model's rollouts, plus copy-last-frame (in each distinct latent space), on the same held-out clips."""
    need = s.context + s.horizon
    if clips.shape[1] < need:
        raise UserError(f"held-out clips have {clips.shape[1]} frames, fewer than --context {s.context} + --horizon "
                        f"{s.horizon}: lower them or train with a longer --model.context")
    clips = clips[:s.clips]
    steps = sorted({1, s.horizon})
    rows, copies = [], {}
    for name, model in models.items():
        if s.context > model.window:
            raise UserError(f"--context {s.context} exceeds {name}'s trained context of {model.window} frames")
        rows.append({**summarise(name, score_rollouts(model, model.encoder, clips, s), steps), "kind": model.kind,
                     "group": seedless(model.cfg)})
        key = model.cfg.video.encoder, model.cfg.video.encoder_path, float(model.encoder.scale)
        if key not in copies:   # copy-last in this model's latent space (its pixels are the true last frame's)
            copies[key] = {**summarise(f"copy-last ({model.cfg.video.encoder})",
                                       score_rollouts(CopyLast(model.window), model.encoder, clips, s), steps),
                           "kind": CopyLast.kind}
    return {"context": s.context, "horizon": s.horizon, "clips": len(clips), "seeds": s.seeds,
            "models": rows + list(copies.values()), "across_checkpoints": across_checkpoints(rows)}


def markdown(result: dict) -> str:
    """The evaluation as a markdown table: one row per model and horizon (1, H, and the mean over the rollout)."""
    h = result["horizon"]
    lines = [f"Held-out clips: {result['clips']}, context {result['context']} frames, horizon {h}, "
             f"{result['seeds']} noise seed(s); mean [95% bootstrap interval over clips].", "",
             "| model | frames | latent SmoothL1 | latent MSE | pixel MSE | PSNR (dB) | NFE/frame |",
             "|---|---|---|---|---|---|---|"]

    def cell(m: dict, digits: int) -> str:
        return f"{m['mean']:.{digits}f} [{m['ci'][0]:.{digits}f}, {m['ci'][1]:.{digits}f}]"

    def add(rows: list[dict]) -> None:
        for row in rows:
            parts = [(f"t+{k}", v) for k, v in row["horizon"].items()] + [(f"mean t+1..t+{h}", row["rollout"])]
            for label, m in parts:
                lines.append(f"| {row['model']} | {label} | {cell(m['latent_smoothl1'], 4)} | "
                             f"{cell(m['latent_mse'], 4)} | {cell(m['pixel_mse'], 4)} | {cell(m['psnr'], 2)} | "
                             f"{row['nfe_per_frame']:g} |")

    add(result["models"])
    if result.get("across_checkpoints"):
        lines += ["", "Across checkpoints of one kind (training seeds): mean of their means [95% t-interval over "
                  "checkpoints].", "", *lines[2:4]]
        add(result["across_checkpoints"])
    return "\n".join(lines)
