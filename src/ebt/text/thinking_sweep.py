"""What thinking buys: the perplexity-vs-forward-passes sweep of the paper (Fig. 6/7), on held-out and
out-of-distribution text, as a table and a plot (`ebt eval thinking`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ebt.text.evaluate import evaluate_text, ppl_change_pct
from ebt.training import distributed as dist

# (label, (extra steps, other options)) rows of the sweep; None = the trained schedule. "Longer" adds steps to the
# trained schedule on the last landscape only (`Thinker.think_longer`), as the paper's 2 -> 3 forward passes;
# self-verification then samples N candidates of that one-step-longer descent.
SWEEP: list[tuple[str, Optional[tuple[int, dict]]]] = [
    ("trained steps", None),
    ("think longer (+1 step)", (1, {})),
    ("think longer (+3 steps)", (3, {})),
    ("best-of-2", (1, {"samples": 2})),
    ("best-of-5", (1, {"samples": 5})),
    ("best-of-10", (1, {"samples": 10})),
]


def thinking_sweep(ebt_model, tpp_model, sets: dict, max_windows: int = 16, batch_size: int = 8,
                   rows=SWEEP, progress: bool = False) -> list[dict]:
    """One record per (model, setting, data set): ppl, ce, bpb, nfe_per_token, and the % change vs no thinking.
    progress: a progress bar of the settings on stderr (the main process's; tqdm hides it off a terminal)."""
    from tqdm.auto import tqdm

    records = []
    bar = tqdm(total=len(sets) * (len(rows) + (tpp_model is not None)), desc="thinking sweep", unit="setting",
               dynamic_ncols=True, disable=None if progress and dist.is_main() else True)   # None: terminals only
    for name, windows in sets.items():
        base = None
        for label, opts in rows:
            bar.set_postfix_str(f"{name}: {label}")
            options = ebt_model.thinker.think_longer(opts[0], **opts[1]) if opts else None
            res = evaluate_text(ebt_model, windows, options, max_windows, batch_size)
            base = res["ce"] if base is None else base
            records.append({"model": "ebt", "setting": label, "set": name, **res,
                            "ppl_change_pct": ppl_change_pct(res["ce"], base)})
            bar.update()
        if tpp_model is not None:
            res = evaluate_text(tpp_model, windows, None, max_windows, batch_size)
            records.append({"model": "transformer", "setting": "(cannot think)", "set": name, **res,
                            "ppl_change_pct": 0.0})
            bar.update()
    bar.close()
    return records


def sweep_table(records: list[dict]) -> str:
    sets = list(dict.fromkeys(r["set"] for r in records))
    rows = list(dict.fromkeys((r["model"], r["setting"]) for r in records))
    head = "| model | setting | NFE/token | " + " | ".join(f"{s} ppl (Δ%), bits/byte" for s in sets) + " |"
    lines = [head, "|" + "---|" * (3 + len(sets))]
    for model, setting in rows:
        cells = []
        nfe = ""
        for s in sets:
            r = next((r for r in records if (r["model"], r["setting"], r["set"]) == (model, setting, s)), None)
            cells.append("" if r is None else f"{r['ppl']:.3f} ({r['ppl_change_pct']:+.1f}%), {r.get('bpb', float('nan')):.3f}")
            nfe = r["nfe_per_token"] if r else nfe
        lines.append(f"| {model} | {setting} | {nfe} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    sets = list(dict.fromkeys(r["set"] for r in records))
    fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 3.4), squeeze=False)
    for ax, s in zip(axes[0], sets):
        ebt_rows = [r for r in records if r["set"] == s and r["model"] == "ebt"]
        longer = [r for r in ebt_rows if not r["setting"].startswith("best-of")]
        best = [r for r in ebt_rows if r["setting"].startswith("best-of")]
        for rows, style, label in ((longer, "o-", "EBT: more steps"), (best, "s-", "EBT: best-of-N")):
            if rows:
                ax.plot([r["nfe_per_token"] for r in rows], [r["ppl"] for r in rows], style, label=label)
        tpp = [r for r in records if r["set"] == s and r["model"] == "transformer"]
        if tpp:
            ax.axhline(tpp[0]["ppl"], color="gray", ls="--", label="Transformer++")
        nfes = sorted({r["nfe_per_token"] for r in ebt_rows})
        ax.set_xscale("log")
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_yscale("log")
        ax.set(title=s, xlabel="forward passes per token", ylabel="perplexity (log)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
