"""Byte level against BPE at lm-tiny size, EBT and Transformer++, several seeds: bits per byte on the same held-out
text (docs/data.md). Each run is an ordinary `ebt train` run folder (an existing finished one is reused), run
`--jobs` at a time with one thread each; every model is then evaluated with `ebt eval --data` on the same text,
the last 1.5% of the embedded corpus (inside every run's held-out split), tokenized by its own tokenizer.

Rows: `bytes` = lm-tiny (16 windows of 64 bytes per step); `bpe-b4` = lm-tiny-bpe with 4 windows of 64 tokens per
step (about the same bytes per step and in total, ~4 bytes per token); `bpe-b16` = lm-tiny-bpe as preset (4x the
bytes).

    python bench/tokenizer_study.py --out runs/tokenizer-study --seeds 0,1,2 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROWS = {"bytes": ["--preset", "lm-tiny"],
        "bpe-b4": ["--preset", "lm-tiny-bpe", "--train.batch_size=4"],
        "bpe-b16": ["--preset", "lm-tiny-bpe"]}
T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 8: 2.365, 10: 2.262}


def ebt(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "ebt", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"ebt {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res.stdout


def run_one(out: Path, row: str, kind: str, seed: int, heldout: Path) -> dict:
    run = out / f"{row}-{kind}-s{seed}"
    if not (run / "checkpoint" / "config.json").is_file():
        ebt("train", *ROWS[row], "--model", kind, f"--train.seed={seed}", "--train.threads=1",
            "--train.progress=false", "--out", str(run), "--overwrite")
    res = json.loads(ebt("eval", str(run), "--data", str(heldout), "--windows", "100000", "--json"))
    return {"row": row, "model": kind, "seed": seed, **res}


def mean_ci(values: list[float]) -> str:
    m = statistics.mean(values)
    if len(values) < 2:
        return f"{m:.4f}"
    half = T95.get(len(values), 2.0) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{m:.4f} ± {half:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from ebt.text.corpus import embedded_corpus

    text = embedded_corpus()
    heldout = out / "heldout.txt"
    heldout.write_text(text[-int(0.015 * len(text)):])
    jobs = [(row, kind, int(s)) for row in args.rows.split(",") for kind in ("ebt", "transformer")
            for s in args.seeds.split(",")]
    with ThreadPoolExecutor(args.jobs) as pool:
        records = list(pool.map(lambda j: run_one(out, *j, heldout), jobs))
    (out / "results.json").write_text(json.dumps(records, indent=1))
    lines = ["| data | model | bits per byte (mean ± 95% CI) | per-token CE | tokens evaluated | seeds |",
             "|---|---|---|---|---|---|"]
    for row in args.rows.split(","):
        for kind in ("ebt", "transformer"):
            rs = [r for r in records if (r["row"], r["model"]) == (row, kind)]
            lines.append(f"| {row} | {kind} | {mean_ci([r['bpb'] for r in rs])} | {mean_ci([r['ce'] for r in rs])} | "
                         f"{rs[0]['tokens']} | {len(rs)} |")
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
