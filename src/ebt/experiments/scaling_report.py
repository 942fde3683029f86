"""The scaling study's report: fits per axis and model, the EBT's rate relative to the Transformer++, report.md,
results.json and one plot per axis."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ebt.experiments.fitting import band, fmt_ci, relative_rate, scaling_rate
from ebt.experiments.scaling import X_OF

METRICS = ("ppl", "ce")


def axis_records(records: list[dict], axis: str) -> list[dict]:
    """The runs fitted on `axis`: its own ladder, or, for flops, the parameter and data runs, each run once (the base
    is on both ladders); failed runs are left out."""
    rows = [r for r in records if r["axis"] in (("params", "data") if axis == "flops" else (axis,))
            and "failed" not in r]
    return list({r["run"]: r for r in rows}.values())


def metric(r: dict, name: str) -> float:
    """ppl from the unclipped cross-entropy (the evaluator caps its ppl at e^50), or the loss."""
    return math.exp(min(r["ce"], 700.0)) if name == "ppl" else r["ce"]


def fit_axis(records: list[dict], axis: str, models: tuple[str, ...]) -> dict:
    """{model: {metric: scaling_rate}, "relative": {metric: relative_rate}} for one axis."""
    rows = axis_records(records, axis)
    out: dict = {}
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        out[model] = {m: scaling_rate([r[X_OF[axis]] for r in mine], [metric(r, m) for r in mine]) for m in METRICS}
    if "ebt" in models and "transformer" in models:
        data = {model: [r for r in rows if r["model"] == model] for model in ("ebt", "transformer")}
        out["relative"] = {m: relative_rate(*[([r[X_OF[axis]] for r in data[k]], [metric(r, m) for r in data[k]])
                                              for k in ("ebt", "transformer")]) for m in METRICS}
    return out


def learning_curve_rate(records: list[dict], model: str) -> dict:
    """Data scaling read from the largest data run's learning curve (validation CE vs tokens seen; the first, earliest
    evaluation dropped). The cosine schedule shapes this curve too, which the separate data runs avoid."""
    runs = [r for r in records if r["axis"] == "data" and r["model"] == model and "failed" not in r]
    if not runs:
        return {}
    largest = max(runs, key=lambda r: (r["tokens"], -r["seed"]))
    curve = largest["curve"][1:]
    if len(curve) < 2:
        return {}
    return scaling_rate([c["tokens"] for c in curve], [math.exp(c["ce"]) for c in curve])


def plot_axis(records: list[dict], axis: str, fits: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model, colour in (("ebt", "tab:red"), ("transformer", "tab:blue")):
        mine = [r for r in axis_records(records, axis) if r["model"] == model]
        if not mine:
            continue
        x = np.array([r[X_OF[axis]] for r in mine], dtype=float)
        ax.scatter(x, [metric(r, "ppl") for r in mine], color=colour, s=18)
        fit = fits[model]["ppl"]
        if math.isfinite(fit["rate"]):
            grid = np.geomspace(x.min(), x.max(), 50)
            ax.plot(grid, np.exp(fit["intercept"] - fit["rate"] * np.log(grid)), color=colour,
                    label=f"{model}: rate {fmt_ci(fit['rate'], fit['ci'])}")
            lo, hi = band(x, [metric(r, "ppl") for r in mine], grid)
            ax.fill_between(grid, lo, hi, color=colour, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(X_OF[axis].replace("_", " "))
    ax.set_ylabel("validation perplexity")
    ax.set_title(f"scaling with {axis}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, records: list[dict], axes: tuple[str, ...], models: tuple[str, ...],
                 command: str) -> dict:
    results = {"axes": {}, "points": records}
    lines = [f"# Scaling study\n\n`{command}`\n",
             "Rate = −slope of the least-squares line of ln(perplexity) (or ln(loss)) on ln(x); 95% intervals from "
             "2,000 bootstrap resamples of the points (and seeds); relative = rate_EBT / rate_T++ − 1.\n",
             "| axis | x | model | rate on ppl [95% CI] | R² | rate on loss [95% CI] | points |",
             "|---|---|---|---|---|---|---|"]
    summary = []
    for axis in axes:
        fits = fit_axis(records, axis, models)
        results["axes"][axis] = fits
        for model in models:
            f = fits[model]
            lines.append(f"| {axis} | {X_OF[axis]} | {model} | {fmt_ci(f['ppl']['rate'], f['ppl']['ci'])} | "
                         f"{f['ppl']['r2']:.3f} | {fmt_ci(f['ce']['rate'], f['ce']['ci'])} | {f['ppl']['n']} |")
        if "relative" in fits:
            rel = fits["relative"]
            lines.append(f"| {axis} | | **EBT vs T++** | {fmt_ci(rel['ppl']['pct'], rel['ppl']['ci'], 1)} % | | "
                         f"{fmt_ci(rel['ce']['pct'], rel['ce']['ci'], 1)} % | |")
            summary.append(f"{axis}: EBT rate {fmt_ci(rel['ppl']['pct'], rel['ppl']['ci'], 1)} % relative to "
                           "Transformer++ (perplexity)")
        plot_axis(records, axis, fits, out / f"scaling_{axis}.png")
    if "data" in axes:
        lines.append("\nData scaling from the largest data run's learning curve (validation perplexity vs tokens):\n")
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
