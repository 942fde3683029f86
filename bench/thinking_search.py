"""A search over inference-time thinking settings of trained text EBTs (issue 18's protocol: choose settings on the
first, "tune", half of the held-out windows and of the Python-docs windows; report the chosen few on the second,
"report", halves with several training seeds).

Every setting is scored by perplexity against the trained schedule of the same model on the same windows and noise;
one JSON object per line, then a markdown table. With several runs (`--ebt a,b,c`, e.g. training seeds) each cell
is the mean change over the runs with a 95% t-interval. `--ood` adds the Dyck and arithmetic sets, whose mean
cross-entropy is printed against ln V (a uniform guess); `--tpp` adds Transformer++ runs as the flat reference line.

    python bench/thinking_search.py --ebt runs/s2 --windows 32                  # the default grid, tuning halves
    python bench/thinking_search.py --ebt runs/s2-0,runs/s2-1,runs/s2-2 --half report --ood \
        --tpp runs/tpp-0,runs/tpp-1,runs/tpp-2 --settings "trained;steps=+3;samples=5,alpha_spread=2"
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ebt.text.evaluate import evaluate_text, ppl_change_pct  # noqa: E402
from ebt.text.ood import arithmetic, dyck, python_docs  # noqa: E402
from ebt.text.splits import heldout_windows, windows_for  # noqa: E402
from ebt.text.task import load_model, load_tokenizer_of  # noqa: E402
from ebt.thinking import ThinkOptions  # noqa: E402

GRID = ("trained; steps=+1; steps=+3; samples=5; samples=5,init_scale=3; samples=5,init_scale=10; "
        "samples=5,entropy_weight=1; samples=5,entropy_weight=10; samples=5,init_scale=3,entropy_weight=1; "
        "steps=+1,samples=5; steps=+1,samples=5,init_scale=3; alpha_scale=0.5; alpha_scale=2; "
        "steps=+1,alpha_scale=0.5; accept_lower=1,steps=+3")


def options_of(text: str, model) -> ThinkOptions | None:
    """'steps=+1,samples=5,init_scale=3' -> ThinkOptions; steps=+K counts from the trained schedule's last landscape
    (`Thinker.think_longer`); 'trained' is the trained schedule."""
    text = text.strip()
    if text == "trained":
        return None
    kw = dict(item.split("=", 1) for item in text.split(","))
    extra = int(kw.pop("steps", "+0"))
    types = {"samples": int, "accept_lower": lambda v: bool(int(v)), "select": str}
    kw = {k: types.get(k, float)(v) for k, v in kw.items()}
    return model.thinker.think_longer(extra, **kw)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of values (one per run); the interval is the mean itself for one run."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, mean, mean
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


def evaluation_sets(cfg, tok, half: str, windows: int, ood: bool) -> dict:
    sets = {"held-out": heldout_windows(cfg, tok), "python_docs": windows_for(python_docs(), cfg.model.context, tok)}
    if ood:
        sets.update(dyck=windows_for(dyck(), cfg.model.context, tok),
                    arithmetic=windows_for(arithmetic(), cfg.model.context, tok))
    return {k: w.half(half, windows) for k, w in sets.items()}


def score_run(run: str, settings: list[str], args) -> tuple[list[dict], int]:
    """One row per setting of one run (per set its ppl, CE and % change against the run's trained schedule), and
    the run's vocabulary size."""
    model, cfg = load_model(run, kind="ebt")
    sets = evaluation_sets(cfg, load_tokenizer_of(run), args.half, args.windows, args.ood)
    rows, base = [], {}
    for setting in settings:
        opts = options_of(setting, model)
        row = {"run": run, "setting": setting, "half": args.half}
        for name, windows in sets.items():
            res = evaluate_text(model, windows, opts, args.windows, 8, args.seed)
            base.setdefault(name, res["ce"])
            row[name] = {"ppl": res["ppl"], "ce": res["ce"], "change_pct": ppl_change_pct(res["ce"], base[name]),
                         "nfe": res["nfe_per_token"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows, cfg.model.vocab_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ebt", required=True, help="text EBT run or checkpoint folders, comma-separated (e.g. seeds)")
    p.add_argument("--tpp", default="", help="Transformer++ runs, comma-separated: their perplexity, for reference")
    p.add_argument("--half", choices=["tune", "report"], default="tune")
    p.add_argument("--windows", type=int, default=32, help="windows per set (from the chosen half)")
    p.add_argument("--settings", default=GRID, help="';'-separated settings (see options_of)")
    p.add_argument("--ood", action="store_true", help="also the Dyck and arithmetic sets")
    p.add_argument("--seed", type=int, default=1234, help="noise seed of the evaluation")
    args = p.parse_args(argv)
    settings = [t.strip() for t in args.settings.split(";") if t.strip()]
    settings = ["trained"] + [t for t in settings if t != "trained"]   # the baseline first
    runs = [r for r in args.ebt.split(",") if r]
    if not runs:
        p.error("--ebt needs at least one run folder")
    scored = [score_run(r, settings, args) for r in runs]
    per_run = [rows for rows, _ in scored]
    names = [k for k in per_run[0][0] if isinstance(per_run[0][0][k], dict)]
    for run in [r for r in args.tpp.split(",") if r]:
        model, cfg = load_model(run, kind="transformer")
        sets = evaluation_sets(cfg, load_tokenizer_of(run), args.half, args.windows, args.ood)
        row = {"run": run, "setting": "Transformer++",
               **{k: evaluate_text(model, w, None, args.windows, 8, args.seed) for k, w in sets.items()}}
        print(json.dumps(row), flush=True)
        per_run.append([row])
    log_v = math.log(scored[0][1])
    print(f"\n{len(runs)} run(s), {args.half} halves, {args.windows} windows per set; ln V = {log_v:.2f} "
          "(a uniform guess's CE)\n")
    print("| setting | NFE | " + " | ".join(f"{k} ppl | Δ% [95% CI]" for k in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    for i, setting in enumerate(settings):
        cells = []
        for k in names:
            ppl = sum(r[i][k]["ppl"] for r in per_run[:len(runs)]) / len(runs)
            mean, lo, hi = t_interval([r[i][k]["change_pct"] for r in per_run[:len(runs)]])
            cells.append(f"{ppl:.3f} | {mean:+.1f}" + (f" [{lo:+.1f}, {hi:+.1f}]" if len(runs) > 1 else ""))
        print(f"| {setting} | {per_run[0][i]['held-out']['nfe']} | " + " | ".join(cells) + " |")
    for rows in per_run[len(runs):]:   # the Transformer++ reference line: no thinking knob
        cells = [f"{rows[0][k]['ppl']:.3f} | –" for k in names]
        print(f"| Transformer++ ({rows[0]['run']}) | 1 | " + " | ".join(cells) + " |")
    if args.ood:
        print("\nMean CE (nats per token) of the trained schedule, each run, against ln V:")
        for k in names:
            print(f"- {k}: " + ", ".join(f"{r[0][k]['ce']:.2f}" for r in per_run[:len(runs)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
