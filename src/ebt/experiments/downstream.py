"""The downstream study (`ebt eval downstream`, the paper's Table 3 and Fig. 7): EBTs and Transformer++ side by side
on downstream tasks, each beside its own pretraining validation perplexity, and each EBT's thinking curve per task
(trained steps -> more steps -> Langevin noise -> best-of-N), with tasks ordered by their distance from the
pretraining data (the paper's OOD shift: a model's item perplexity on the task / its pretraining perplexity).
Writes downstream.md, downstream.json and downstream.png."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ebt.errors import UserError
from ebt.text.downstream.items import Item
from ebt.text.downstream.scoring import Scoring, score_task
from ebt.text.evaluate import evaluate_text, ppl_change_pct
from ebt.text.splits import heldout_windows
from ebt.text.task import load_model, load_tokenizer_of

# the thinking curve: (label, (extra steps, other options)); None = the trained schedule. Extra steps go on the last
# landscape after the trained ones (`Thinker.think_longer`; the paper's 2 -> 3 forward passes); Langevin noise and
# best-of-N then build on the one-step-longer descent.
CURVE: list[tuple[str, Optional[tuple[int, dict]]]] = [
    ("trained steps", None),
    ("+1 step", (1, {})),
    ("+3 steps", (3, {})),
    ("+1 step, Langevin 1", (1, {"langevin_std": 1.0})),
    ("best-of-4", (1, {"samples": 4})),
]


def run_study(checkpoints: list[str], tasks: dict[str, list[Item]], scoring: Scoring, curve: bool = True,
              pretrain_windows: int = 64, log=print) -> list[dict]:
    """One record per (checkpoint, thinking setting, task). `scoring.options`, if given, replaces the trained
    schedule of the EBTs' main row; the Transformer++ has only its one row."""
    records = []
    for ckpt in checkpoints:
        model, cfg = load_model(ckpt)
        tok = load_tokenizer_of(ckpt)
        pre = evaluate_text(model, heldout_windows(cfg, tok), None, pretrain_windows)
        base = {"checkpoint": str(ckpt), "model": model.kind, "context": cfg.model.context, "tokenizer": tok.fingerprint,
                "pretrain_ppl": pre["ppl"], "pretrain_bpb": pre["bpb"]}
        given = scoring.options if model.can_think else None        # a Transformer++ has its one plain row
        rows = [("trained steps" if given is None else "given options", given)]
        if model.can_think and curve:
            rows += [(label, model.thinker.think_longer(extra, **opts)) for label, (extra, opts) in CURVE[1:]]
        for i, (label, options) in enumerate(rows):
            for name, items in tasks.items():
                log(f"{model.kind} {Path(ckpt).name}: {name}, {label}")
                # multiple choice and exact match on the main row; the curve follows the gold answers' perplexity
                settings = Scoring(options, scoring.seeds, scoring.batch_size, scoring.stride,
                                   scoring.generate_tokens if i == 0 else 0, multiple_choice=i == 0)
                res = score_task(model, items, tok, settings)
                records.append({**base, "setting": label, "main": i == 0, "task": name, **res})
    for r in records:   # distance and change vs the same checkpoint's main row
        first = next(b for b in records if (b["checkpoint"], b["task"]) == (r["checkpoint"], r["task"]))
        r["distance"] = first["item_ppl"] / r["pretrain_ppl"]
        r["answer_ppl_change_pct"] = ppl_change_pct(r["answer_ce"], first["answer_ce"])
    return records


def read_records(path: str | Path) -> list[dict]:
    """The records of an earlier run's downstream.json (to report several runs together)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"--merge {str(path)!r} {what}: pass a downstream.json written by `ebt eval downstream`")
    try:
        records = json.loads(path.read_text())
        if not isinstance(records, list) or not all(isinstance(r, dict) and "task" in r and "main" in r
                                                    for r in records):
            raise ValueError("not a list of downstream records")
    except (OSError, ValueError) as exc:
        raise UserError(f"--merge {str(path)!r} is not a downstream.json written by `ebt eval downstream` "
                        f"({type(exc).__name__}): pass that file") from None
    return records


def _ci(value: float, ci: Optional[list[float]], fmt: str = "{:.2f}") -> str:
    if ci is None:
        return fmt.format(value)
    return f"{fmt.format(value)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _name(r: dict) -> str:
    return f"{r['model']} ({Path(r['checkpoint']).name})"


def main_table(records: list[dict]) -> str:
    """Each checkpoint's first row per task: pretraining beside downstream."""
    first = [r for r in records if r["main"]]
    lines = ["| model | pretrain ppl | task | item ppl | answer ppl [95% CI] | answer bits/byte | "
             "MC acc by ppl (chance) | MC acc by energy | exact match |", "|" + "---|" * 9]
    for r in first:
        mc = (_ci(r["mc_acc_ppl"], r["mc_acc_ppl_ci"]) + f" ({r['mc_chance']:.2f})") if "mc_acc_ppl" in r else ""
        energy = _ci(r["mc_acc_energy"], r["mc_acc_energy_ci"]) if "mc_acc_energy" in r else ""
        em = _ci(r["exact_match"], r["exact_match_ci"]) if "exact_match" in r else ""
        lines.append(f"| {_name(r)} | {r['pretrain_ppl']:.3f} | {r['task']} | {r['item_ppl']:.3f} | "
                     f"{_ci(r['answer_ppl'], r['answer_ppl_ci'])} | {r['answer_bpb']:.3f} | {mc} | {energy} | {em} |")
    return "\n".join(lines) + "\n"


def curve_table(records: list[dict]) -> str:
    """Each thinking model's answer perplexity per setting and task (change vs its first row), tasks ordered by
    distance from the pretraining data."""
    thinkers = list(dict.fromkeys(r["checkpoint"] for r in records if not r["main"]))
    if not thinkers:
        return ""
    tasks = ordered_tasks(records)
    lines = ["| model | setting | NFE/token | " + " | ".join(f"{t} answer ppl (Δ%)" for t in tasks) + " |",
             "|" + "---|" * (3 + len(tasks))]
    for ckpt in thinkers:
        for setting in dict.fromkeys(r["setting"] for r in records if r["checkpoint"] == ckpt):
            rows = {r["task"]: r for r in records if (r["checkpoint"], r["setting"]) == (ckpt, setting)}
            any_row = next(iter(rows.values()))
            cells = [f"{rows[t]['answer_ppl']:.3f} ({rows[t]['answer_ppl_change_pct']:+.1f}%)" if t in rows else ""
                     for t in tasks]
            lines.append(f"| {_name(any_row)} | {setting} | {any_row['nfe_per_token']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ordered_tasks(records: list[dict]) -> list[str]:
    """Tasks by mean distance (item ppl / pretraining ppl over the checkpoints' first rows), nearest first."""
    tasks = list(dict.fromkeys(r["task"] for r in records))
    first = [r for r in records if r["main"]]

    def distance(t: str) -> float:
        d = [r["distance"] for r in first if r["task"] == t]
        return sum(d) / len(d)
    return sorted(tasks, key=distance)


def gains(records: list[dict]) -> list[dict]:
    """Per (thinking checkpoint, task): its distance and its best thinking gain (% answer ppl reduction)."""
    out = []
    for ckpt in dict.fromkeys(r["checkpoint"] for r in records):
        for t in ordered_tasks(records):
            rows = [r for r in records if (r["checkpoint"], r["task"]) == (ckpt, t)]
            if len(rows) > 1:
                best = min(rows[1:], key=lambda r: r["answer_ppl"])
                out.append({"checkpoint": ckpt, "task": t, "distance": rows[0]["distance"], "best": best["setting"],
                            "gain_pct": -best["answer_ppl_change_pct"]})
    return out


def report(records: list[dict], out: Path) -> str:
    text = "## EBT vs Transformer++ downstream\n\n" + main_table(records)
    curve = curve_table(records)
    if curve:
        text += "\n## Thinking curve (tasks ordered by distance from the pretraining data)\n\n" + curve
        rows = gains(records)
        text += ("\n## Best thinking gain by distance\n\n| checkpoint | task | distance (item ppl / pretrain ppl) | "
                 "best setting | answer ppl gain |\n|---|---|---|---|---|\n")
        text += "".join(f"| {Path(g['checkpoint']).name} | {g['task']} | {g['distance']:.2f} | {g['best']} | "
                        f"{g['gain_pct']:+.1f}% |\n" for g in rows)
    (out / "downstream.md").write_text(text)
    (out / "downstream.json").write_text(json.dumps(records, indent=1))
    plot(records, out / "downstream.png")
    return text


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = ordered_tasks(records)
    first = [r for r in records if r["main"]]
    found = gains(records)
    panels = len(tasks) + (1 if found else 0)
    cols = min(4, panels)
    rows = -(-panels // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.3 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    markers = {"ebt": ("o", "C0", "EBT"), "transformer": ("s", "C1", "Transformer++")}
    for ax, t in zip(axes, tasks):
        for kind, (m, colour, label) in markers.items():
            rows = [r for r in first if r["task"] == t and r["model"] == kind]
            if rows:
                ci = [r["answer_ppl_ci"] or [r["answer_ppl"]] * 2 for r in rows]   # None: a single item
                ax.errorbar([r["pretrain_ppl"] for r in rows], [r["answer_ppl"] for r in rows],
                            yerr=[[r["answer_ppl"] - c[0] for r, c in zip(rows, ci)],
                                  [c[1] - r["answer_ppl"] for r, c in zip(rows, ci)]],
                            fmt=m, color=colour, label=label, capsize=2)
        ax.set(title=t, xlabel="pretraining perplexity", ylabel="answer perplexity (log)", yscale="log")
        ax.legend(fontsize=7)
    if not found:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    ax = axes[panels - 1]
    for k, ckpt in enumerate(dict.fromkeys(g["checkpoint"] for g in found)):
        mine = [g for g in found if g["checkpoint"] == ckpt]
        ax.plot([g["distance"] for g in mine], [g["gain_pct"] for g in mine], "o", color=f"C{k + 2}",
                label=Path(ckpt).name)
        for g in mine:
            ax.annotate(g["task"], (g["distance"], g["gain_pct"]), fontsize=6)
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(title="best thinking gain vs distance", xlabel="item ppl / pretraining ppl (log)", xscale="log",
           ylabel="answer ppl gain (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
