"""The scaling study's report: fits per axis and model, the EBT's rate relative to the Transformer++, report.md,
results.json and one plot per axis."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ebt.experiments.fitting import band, fmt_ci, relative_rate, scaling_rate
from ebt.experiments.scaling import X_OF

NAMES = {"ppl": "perplexity", "loss": "loss"}


def metrics_of(records: list[dict]) -> tuple[str, ...]:
    """What the points are fitted on: text on validation perplexity and loss (cross-entropy), video on its loss
    (held-out latent SmoothL1); the first is the headline. The runner writes the study's task into every record."""
    return ("loss",) if any(r.get("task") == "video" for r in records) else ("ppl", "loss")


def axis_records(records: list[dict], axis: str) -> list[dict]:
    """The runs fitted on `axis`: its own ladder, or, for flops, the parameter and data runs, each run once (the base
    is on both ladders); failed runs are left out."""
    rows = [r for r in records if r["axis"] in (("params", "data") if axis == "flops" else (axis,))
            and "failed" not in r]
    return list({r["run"]: r for r in rows}.values())


def metric(r: dict, name: str) -> float:
    """ppl from the unclipped cross-entropy (the evaluator caps its ppl at e^50), or the loss (records written before
    the video task carry the cross-entropy as "ce" only)."""
    loss = r.get("loss", r.get("ce"))
    return math.exp(min(loss, 700.0)) if name == "ppl" else loss


def fit_axis(records: list[dict], axis: str, models: tuple[str, ...]) -> dict:
    """{model: {metric: scaling_rate}, "relative": {metric: relative_rate}} for one axis."""
    rows = axis_records(records, axis)
    out: dict = {}
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        out[model] = {m: scaling_rate([r[X_OF[axis]] for r in mine], [metric(r, m) for r in mine])
                      for m in metrics_of(records)}
    if "ebt" in models and "transformer" in models:
        data = {model: [r for r in rows if r["model"] == model] for model in ("ebt", "transformer")}
        out["relative"] = {m: relative_rate(*[([r[X_OF[axis]] for r in data[k]], [metric(r, m) for r in data[k]])
                                              for k in ("ebt", "transformer")]) for m in metrics_of(records)}
    return out


def learning_curve_rate(records: list[dict], model: str) -> dict:
    """Data scaling read from the largest data run's learning curve (validation loss, as the headline metric, vs
    tokens seen; the first, earliest evaluation dropped). The cosine schedule shapes this curve too, which the separate
    data runs avoid."""
    runs = [r for r in records if r["axis"] == "data" and r["model"] == model and "failed" not in r]
    if not runs:
        return {}
    largest = max(runs, key=lambda r: (r["tokens"], -r["seed"]))
    curve = largest["curve"][1:]
    if len(curve) < 2:
        return {}
    head = metrics_of(records)[0]
    return scaling_rate([c["tokens"] for c in curve], [metric(c, head) for c in curve])


def plot_axis(records: list[dict], axis: str, fits: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = metrics_of(records)[0]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model, colour in (("ebt", "tab:red"), ("transformer", "tab:blue")):
        mine = [r for r in axis_records(records, axis) if r["model"] == model]
        if not mine:
            continue
        x = np.array([r[X_OF[axis]] for r in mine], dtype=float)
        ax.scatter(x, [metric(r, head) for r in mine], color=colour, s=18)
        fit = fits[model][head]
        if math.isfinite(fit["rate"]):
            grid = np.geomspace(x.min(), x.max(), 50)
            ax.plot(grid, np.exp(fit["intercept"] - fit["rate"] * np.log(grid)), color=colour,
                    label=f"{model}: rate {fmt_ci(fit['rate'], fit['ci'])}")
            lo, hi = band(x, [metric(r, head) for r in mine], grid)
            ax.fill_between(grid, lo, hi, color=colour, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(X_OF[axis].replace("_", " "))
    ax.set_ylabel(f"validation {NAMES[head]}")
    ax.set_title(f"scaling with {axis}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, records: list[dict], axes: tuple[str, ...], models: tuple[str, ...],
                 command: str) -> dict:
    results = {"axes": {}, "points": records}
    metrics = metrics_of(records)
    head = metrics[0]
    lines = [f"# Scaling study\n\n`{command}`\n",
             f"Rate = −slope of the least-squares line of ln({' / '.join(NAMES[m] for m in metrics)}) on ln(x); 95% "
             "intervals from 2,000 bootstrap resamples of the points (and seeds); relative = rate_EBT / rate_T++ − 1.\n",
             "| axis | x | model | " + " | ".join(f"rate on {m} [95% CI] | R²" for m in metrics) + " | points |",
             "|---|---|---|" + "---|---|" * len(metrics) + "---|"]
    summary = []
    for axis in axes:
        fits = fit_axis(records, axis, models)
        results["axes"][axis] = fits
        for model in models:
            f = fits[model]
            lines.append(f"| {axis} | {X_OF[axis]} | {model} | "
                         + " | ".join(f"{fmt_ci(f[m]['rate'], f[m]['ci'])} | {f[m]['r2']:.3f}" for m in metrics)
                         + f" | {f[head]['n']} |")
        if "relative" in fits:
            rel = fits["relative"]
            lines.append(f"| {axis} | | **EBT vs T++** | "
                         + " | ".join(f"{fmt_ci(rel[m]['pct'], rel[m]['ci'], 1)} % | " for m in metrics) + " |")
            summary.append(f"{axis}: EBT rate {fmt_ci(rel[head]['pct'], rel[head]['ci'], 1)} % relative to "
                           f"Transformer++ ({NAMES[head]})")
        plot_axis(records, axis, fits, out / f"scaling_{axis}.png")
    if "data" in axes:
        lines.append(f"\nData scaling from the largest data run's learning curve (validation {NAMES[head]} vs "
                     "tokens):\n")
        for model in models:
            curve = learning_curve_rate(records, model)
            results.setdefault("learning_curve", {})[model] = curve
            if curve:
                lines.append(f"- {model}: rate {fmt_ci(curve['rate'], curve['ci'])}, R² {curve['r2']:.3f}")
    failed = [r for r in records if "failed" in r]
    if failed:
        lines.append("\nFailed runs (left out of the fits):\n")
        lines += [f"- {r['run']}: {r['failed']}" for r in {r["run"]: r for r in failed}.values()]
    lines.append("\n" + "\n".join(f"- {s}" for s in summary))
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return {"summary": summary}
