"""What thinking buys: the perplexity-vs-forward-passes sweep of the paper (Fig. 6/7), and per-token energies as
uncertainty (Fig. 8). Registers `ebt eval thinking` and `ebt energy`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from ebt.cli import command
from ebt.errors import UserError
from ebt.evaluate import evaluate_text, heldout_windows, windows_for
from ebt.inference import ThinkOptions, think

# (label, options) rows of the sweep; None = the trained schedule. "Longer" adds steps on the last landscape only,
# as the paper's 2 -> 3 forward passes; self-verification then samples N candidates of that 3-step descent.
SWEEP: list[tuple[str, Optional[dict]]] = [
    ("trained steps", None),
    ("think longer (+1 step)", {"steps": 2, "final_landscape_only": True}),
    ("think longer (+3 steps)", {"steps": 4, "final_landscape_only": True}),
    ("best-of-2", {"steps": 2, "final_landscape_only": True, "samples": 2}),
    ("best-of-5", {"steps": 2, "final_landscape_only": True, "samples": 5}),
    ("best-of-10", {"steps": 2, "final_landscape_only": True, "samples": 10}),
]


def thinking_sweep(ebt_model, tpp_model, sets: dict, max_windows: int = 16, batch_size: int = 8,
                   rows=SWEEP) -> list[dict]:
    """One record per (model, setting, data set): ppl, ce, nfe_per_token, and the % change vs no thinking."""
    records = []
    for name, windows in sets.items():
        base = None
        for label, opts in rows:
            res = evaluate_text(ebt_model, windows, ThinkOptions(**opts) if opts else None, max_windows, batch_size)
            base = base or res["ppl"]
            records.append({"model": "ebt", "setting": label, "set": name, **res,
                            "ppl_change_pct": 100.0 * (res["ppl"] - base) / base})
        if tpp_model is not None:
            res = evaluate_text(tpp_model, windows, None, max_windows, batch_size)
            records.append({"model": "transformer", "setting": "(cannot think)", "set": name, **res,
                            "ppl_change_pct": 0.0})
    return records


def sweep_table(records: list[dict]) -> str:
    sets = list(dict.fromkeys(r["set"] for r in records))
    rows = list(dict.fromkeys((r["model"], r["setting"]) for r in records))
    head = "| model | setting | NFE/token | " + " | ".join(f"{s} ppl (Δ%)" for s in sets) + " |"
    lines = [head, "|" + "---|" * (3 + len(sets))]
    for model, setting in rows:
        cells = []
        nfe = ""
        for s in sets:
            r = next((r for r in records if (r["model"], r["setting"], r["set"]) == (model, setting, s)), None)
            cells.append("" if r is None else f"{r['ppl']:.3f} ({r['ppl_change_pct']:+.1f}%)")
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


def _eval_thinking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ebt", required=True, help="EBT run or checkpoint folder")
    p.add_argument("--transformer", help="Transformer++ run or checkpoint folder (optional)")
    p.add_argument("--out", required=True, help="folder for thinking.md / thinking.png / thinking.json (new)")
    p.add_argument("--windows", type=int, default=16, help="context windows per data set")
    p.add_argument("--ood", action="append", default=[], metavar="NAME=PATH", help="add your own OOD text file")
    p.add_argument("--no-embedded-ood", action="store_true", help="skip the embedded OOD sets")


@command("eval-thinking", _eval_thinking_args)
def cmd_eval_thinking(args: argparse.Namespace) -> int:
    """Perplexity vs forward passes from thinking (more steps, best-of-N) on held-out and OOD text."""
    from ebt.checkpoint import load_model
    from ebt.ood import ood_sets

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{str(out)!r} already exists and is not empty: choose a new --out folder")
    if args.windows < 1:
        raise UserError("--windows must be >= 1")
    extra = {}
    for item in args.ood:
        if "=" not in item:
            raise UserError(f"--ood {item!r}: write NAME=PATH")
        name, path = item.split("=", 1)
        extra[name] = path
    ebt_model, cfg = load_model(args.ebt, kind="ebt")
    tpp_model = load_model(args.transformer, kind="transformer")[0] if args.transformer else None
    sets = {"held-out": heldout_windows(cfg, None)}
    texts = ood_sets(extra, embedded=not args.no_embedded_ood)
    sets.update({k: windows_for(v, cfg.model.context) for k, v in texts.items()})
    records = thinking_sweep(ebt_model, tpp_model, sets, args.windows)
    out.mkdir(parents=True, exist_ok=True)
    table = sweep_table(records)
    (out / "thinking.md").write_text(table)
    (out / "thinking.json").write_text(json.dumps(records, indent=1))
    sweep_plot(records, out / "thinking.png")
    print(table)
    return 0


# ---- per-token energies ---------------------------------------------------------------------------------------
def token_energies(model, text: str, opts: Optional[ThinkOptions] = None, seed: int = 0) -> dict:
    """Energies of each next-token prediction for `text`: per step (steps, T) and final (T,), with the tokens."""
    from ebt.data.text import ByteTokenizer

    tok = ByteTokenizer()
    ids = tok.encode(text)
    if len(ids) < 2:
        raise UserError("--text needs at least two characters (each token is scored given the ones before it)")
    if len(ids) - 1 > model.cfg.context:
        raise UserError(f"--text has {len(ids)} tokens, more than the model's context {model.cfg.context} + 1: "
                        "shorten it")
    x = torch.tensor([ids[:-1]])
    res = think(model, x, opts, generator=torch.Generator().manual_seed(seed))
    tokens = [tok.decode([i]) or "\\0" for i in ids[1:]]
    return {"tokens": tokens, "final": res.final_energy[0].tolist(), "steps": res.energies[:, 0].tolist(),
            "steps_used": res.steps_used[0].tolist()}


def colour(text: str, value: float, lo: float, hi: float) -> str:
    """ANSI 256-colour background from green (low energy: confident) to red (high energy: uncertain)."""
    t = 0.0 if hi <= lo else (value - lo) / (hi - lo)
    code = [46, 82, 118, 154, 190, 226, 220, 214, 208, 202, 196][min(10, int(t * 10.999))]
    return f"\x1b[48;5;{code}m\x1b[30m{text}\x1b[0m"


def heatmap(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = torch.tensor(result["steps"] + [result["final"]])  # (steps + 1, T)
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * steps.shape[1]), 0.5 * steps.shape[0] + 1.5))
    im = ax.imshow(steps.numpy(), aspect="auto", cmap="RdYlGn_r")
    ax.set_xticks(range(steps.shape[1]), [t.replace("\n", "\\n") for t in result["tokens"]], fontsize=8)
    ax.set_yticks(range(steps.shape[0]), [f"step {k}" for k in range(steps.shape[0] - 1)] + ["final"])
    ax.set_title("energy of each next-token prediction (lower = more confident)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _energy_args(p: argparse.ArgumentParser) -> None:
    from ebt.cli import add_think_args

    p.add_argument("checkpoint", help="EBT run or checkpoint folder")
    p.add_argument("--text", required=True)
    p.add_argument("--png", help="also write a tokens x steps heatmap here")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.add_argument("--seed", type=int, default=0)
    add_think_args(p)


@command("energy", _energy_args)
def cmd_energy(args: argparse.Namespace) -> int:
    """Show each token with its final energy (uncertainty); optionally a heatmap over thinking steps."""
    from ebt.checkpoint import load_model
    from ebt.cli import think_options

    model, _ = load_model(args.checkpoint, kind="ebt")
    result = token_energies(model, args.text, think_options(args), args.seed)
    if args.png:
        heatmap(result, Path(args.png))
    if args.json:
        print(json.dumps(result))
        return 0
    lo, hi = min(result["final"]), max(result["final"])
    tty = sys.stdout.isatty()
    first = args.text.encode("utf-8")[:1].decode("utf-8", errors="replace")
    print(first + "".join(colour(t, e, lo, hi) if tty else t for t, e in zip(result["tokens"], result["final"])))
    for t, e in zip(result["tokens"], result["final"]):
        print(f"{t!r:8s} {e:10.4f}")
    return 0
