"""A search over inference-time thinking settings of a trained text EBT, on the tuning halves only (issue 18's
protocol: choose settings on the first half of the held-out windows and of the Python-docs windows, report the chosen
few on the second halves with several training seeds).

Every setting is scored by perplexity against the trained schedule on the same windows and noise; one JSON object
per line, then a markdown table.

    python bench/thinking_search.py --ebt runs/s2 --windows 32                  # the default grid, tuning halves
    python bench/thinking_search.py --ebt runs/s2 --half report --settings "trained;steps=+1,samples=5"
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ebt.text.evaluate import evaluate_text  # noqa: E402
from ebt.text.ood import python_docs  # noqa: E402
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ebt", required=True, help="a text EBT run or checkpoint folder")
    p.add_argument("--half", choices=["tune", "report"], default="tune")
    p.add_argument("--windows", type=int, default=32, help="windows per set (from the chosen half)")
    p.add_argument("--settings", default=GRID, help="';'-separated settings (see options_of)")
    p.add_argument("--seed", type=int, default=1234, help="noise seed of the evaluation")
    args = p.parse_args(argv)
    model, cfg = load_model(args.ebt, kind="ebt")
    tok = load_tokenizer_of(args.ebt)
    sets = {"held-out": heldout_windows(cfg, tok), "python_docs": windows_for(python_docs(), cfg.model.context, tok)}
    sets = {k: w.half(args.half, args.windows) for k, w in sets.items()}
    rows, base = [], {}
    settings = [t.strip() for t in args.settings.split(";") if t.strip()]
    for setting in ["trained"] + [t for t in settings if t != "trained"]:   # the baseline first
        opts = options_of(setting, model)
        row = {"setting": setting, "half": args.half}
        for name, windows in sets.items():
            res = evaluate_text(model, windows, opts, args.windows, 8, args.seed)
            base.setdefault(name, res["ppl"])
            row[name] = {"ppl": res["ppl"], "change_pct": 100 * (res["ppl"] / base[name] - 1),
                         "nfe": res["nfe_per_token"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| setting | NFE | " + " | ".join(f"{k} ppl (Δ%)" for k in sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for r in rows:
        cells = " | ".join(f"{r[k]['ppl']:.3f} ({r[k]['change_pct']:+.1f}%)" for k in sets)
        print(f"| {r['setting']} | {r['held-out']['nfe']} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
