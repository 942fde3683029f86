"""Experiments that reproduce the paper's studies at a small budget: `ebt experiment NAME --out DIR`.

s2-ablation (paper Table 2; docs/s2.md): train the full System 2 recipe, one variant without each of
its components (random step size, random number of steps, Langevin noise, replay buffer) and a System 1 baseline,
all with the same model size, data order and number of steps. Then measure each on the held-out split and on the
out-of-distribution sets of `ebt.text.ood` with
- no thinking: the trained evaluation schedule;
- thinking longer: `think_factor` times as many steps (extra steps on the last landscape);
- + self-verification: thinking longer with best-of-`samples` candidates, the lowest final energy per position;
- + self-verification (Langevin): the same with the variant's own training Langevin noise at every step, which is
  what the reference's S2 inference does by default (its samples otherwise differ only in their initial noise).
The table reports the % perplexity improvement of each thinking mode over no thinking, as the paper does.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ebt.config import DataConfig, ModelConfig, RunConfig, ThinkConfig
from ebt.errors import UserError
from ebt.presets import lm_tiny, lm_tiny_s2
from ebt.tasks import fit
from ebt.text.evaluate import evaluate_text
from ebt.text.splits import heldout_windows, run_tokenizer, windows_for
from ebt.text.ood import ood_sets
from ebt.text.task import load_model
from ebt.thinking import ThinkOptions, trained_schedule
from ebt.training.rundir import prepare_output

def _s1_think(_: ThinkConfig) -> ThinkConfig:
    """The S1 recipe's thinking settings in place of the S2 ones."""
    return lm_tiny().think


# variant key -> (label, change of the full S2 think config)
VARIANTS: dict[str, tuple[str, Callable[[ThinkConfig], ThinkConfig]]] = {
    "no-rand-alpha": ("No random step size", lambda t: dataclasses.replace(t, rand_alpha_scale=1.0)),
    # fixed at the evaluation count (R+1 = 3) so that training and evaluation run the same number of steps
    "no-rand-steps": ("No random num. steps", lambda t: dataclasses.replace(t, rand_steps_min=t.rand_steps + 1)),
    "no-langevin": ("No Langevin dynamics", lambda t: dataclasses.replace(t, langevin_std=0.0)),
    "no-replay": ("No replay buffer", lambda t: dataclasses.replace(t, replay_size=0)),
    "full": ("Full S2 config", lambda t: t),
    "s1": ("S1 baseline", _s1_think),
}
MODES = ("none", "longer", "verify", "verify_noise")
MODE_NAMES = {"longer": "thinking longer", "verify": "+ self-verification", "verify_noise": "+ self-verif. (Langevin)"}


@dataclass(kw_only=True)
class AblationSettings:
    steps: int = 500
    """Training steps per variant."""
    windows: int = 64
    """Evaluation windows per data set."""
    samples: int = 5
    """Candidates per position for self-verification."""
    think_factor: int = 2
    """Thinking longer = this many times the trained number of evaluation steps."""
    variants: tuple[str, ...] = tuple(VARIANTS)
    seed: int = 0
    threads: int = 1
    """torch CPU threads (0: PyTorch's default). The matrices here are tiny: on a shared 2-core machine one thread
    per process ran 7x faster than two (threads spin waiting for each other when the cores are oversubscribed)."""
    quick: bool = False
    """A trivially small model and budget (seconds): for tests and smoke runs."""


def base_config(s: AblationSettings, out: Path) -> RunConfig:
    """The lm-tiny-s2 recipe on a smaller model, so that six variants train well under an hour on 2 CPU cores."""
    cfg = lm_tiny_s2()
    if s.quick:
        cfg.model = ModelConfig(dim=32, layers=2, heads=2, context=16)
        cfg.data = DataConfig(max_chars=20000, val_fraction=0.1)
        cfg.train.batch_size = 4
    else:
        cfg.model = ModelConfig(dim=64, layers=2, heads=2, context=32)
        cfg.data = DataConfig(max_chars=400_000)
    cfg.optim.warmup_steps = max(1, min(cfg.optim.warmup_steps, s.steps // 10))
    t = cfg.train
    t.steps, t.eval_every, t.log_every, t.eval_batches = s.steps, s.steps, max(1, s.steps // 10), 4
    t.seed, t.progress, t.out_dir, t.threads = s.seed, False, str(out), s.threads
    return cfg


def variant_config(base: RunConfig, key: str, out: Path) -> RunConfig:
    return dataclasses.replace(base, think=VARIANTS[key][1](base.think),
                               train=dataclasses.replace(base.train, out_dir=str(out / key)))


def ood_texts(quick: bool) -> dict[str, str]:
    """The embedded OOD sets (ebt.text.ood: Python docs prose, Dyck strings, arithmetic), cut to what is evaluated."""
    limit = 4000 if quick else 40_000  # characters: more than the windows evaluated
    return {name: text[:limit] for name, text in ood_sets().items()}


def think_modes(think: ThinkConfig, s: AblationSettings) -> dict[str, ThinkOptions]:
    """ThinkOptions per mode for a model trained with `think`. Thinking longer multiplies the number of evaluation
    steps by think_factor, adding the extra steps on the last landscape (S2 has one landscape; S1 goes [0, 1] ->
    [0, 1, 1, 1])."""
    base = len(trained_schedule(think, training=False))
    last = base * s.think_factor - (think.landscapes - 1)  # steps on the last landscape
    longer = dict(steps=last, final_landscape_only=True)
    modes = {"none": ThinkOptions(), "longer": ThinkOptions(**longer),
             "verify": ThinkOptions(**longer, samples=s.samples, select="min")}
    if think.langevin_std > 0:  # otherwise identical to "verify"
        modes["verify_noise"] = ThinkOptions(**longer, samples=s.samples, langevin_std=think.langevin_std)
    return modes


def gain(ce_base: float, ce: float) -> float:
    """% perplexity improvement over no thinking (positive = thinking helped), from the cross-entropies so that
    sets with astronomical perplexities (e.g. brackets never seen in training) do not overflow."""
    return 100.0 * (1.0 - math.exp(min(ce - ce_base, 50.0)))


def run_s2_ablation(out: Path, s: AblationSettings, log: Callable[[str], None] = print) -> dict:
    """Train and evaluate every variant; writes results.json, table.md and s2_ablation.png into `out`."""
    unknown = [v for v in s.variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    prepare_output(out, overwrite=False, can_overwrite=False)   # its variants' run folders are never replaced: always a new --out
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        return _run(out, s, log)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, s: AblationSettings, log: Callable[[str], None]) -> dict:
    base = base_config(s, out)
    texts = ood_texts(s.quick)
    results: dict = {"settings": dataclasses.asdict(s), "vocab_size": base.model.vocab_size, "variants": {}}
    t_start = time.time()
    # variants change only the thinking settings: the evaluation windows are the same for all of them
    tok = run_tokenizer(base)
    data = {"held-out": heldout_windows(base, tok)}
    data.update({name: windows_for(text, base.model.context, tok) for name, text in texts.items()})
    for key in s.variants:
        cfg = variant_config(base, key, out)
        t0 = time.time()
        res = fit(cfg)
        model, trained = load_model(res.out_dir)
        modes = think_modes(trained.think, s)
        row = {"label": VARIANTS[key][0], "train_seconds": round(res.seconds, 1), "val": res.val, "sets": {}}
        for name, windows in data.items():  # the same seed: every mode starts from the same initial noise
            r = {m: evaluate_text(model, windows, opts, s.windows, 16, seed=1234) for m, opts in modes.items()}
            r.setdefault("verify_noise", r["verify"])
            row["sets"][name] = r
        results["variants"][key] = row
        log(f"[s2-ablation] {key}: {res.step} steps in {res.seconds:.0f}s, val ce {res.val.get('ce', float('nan')):.3f}"
            f", total {time.time() - t0:.0f}s")
    results["seconds"] = round(time.time() - t_start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = markdown_table(results, list(texts))
    (out / "table.md").write_text(table)
    plot(results, list(texts), out / "s2_ablation.png")
    log(table)
    return results


def comparable_sets(results: dict, ood: list[str]) -> list[str]:
    """OOD sets on which every variant beats a uniform guess (CE < ln V) without thinking. On the others (e.g.
    bytes never seen in training) the EBT's logits are wild, CEs run to tens of nats per byte, and % changes of
    perplexity say nothing about thinking; they are shown per set but left out of the OOD aggregate."""
    uniform = math.log(results["vocab_size"])
    return [n for n in ood if all(r["sets"][n]["none"]["ce"] < uniform for r in results["variants"].values())]


def summary(row: dict, ood: list[str]) -> dict[str, float]:
    """% improvement per mode on each set, and over the `ood` sets together (of their geometric-mean perplexity,
    i.e. from the mean cross-entropy change; nan when there is no such set)."""
    out = {}
    for mode in MODE_NAMES:
        for name, r in row["sets"].items():
            out[f"{name} {mode}"] = gain(r["none"]["ce"], r[mode]["ce"])
        deltas = [row["sets"][n][mode]["ce"] - row["sets"][n]["none"]["ce"] for n in ood]
        out[f"OOD {mode}"] = gain(0.0, sum(deltas) / len(deltas)) if deltas else float("nan")
    return out


def markdown_table(results: dict, ood: list[str]) -> str:
    s, rows = results["settings"], results["variants"]
    agg = comparable_sets(results, ood)
    sets = ["held-out", "OOD"] + ood
    names = {"OOD": f"OOD: {' + '.join(agg) if agg else 'none'}"}
    lines = [f"% perplexity improvement from thinking over no thinking (positive = better), as *thinking longer / "
             f"+ self-verification / + self-verification with Langevin noise*. Thinking longer = {s['think_factor']}x "
             f"the trained evaluation steps; self-verification = best of {s['samples']} by lowest energy on top of "
             f"it, without / with the variant's training Langevin noise. The OOD column is the geometric-mean "
             f"perplexity over the OOD sets on which every variant beats a uniform guess (CE < ln V); the other "
             f"sets are shown on their own. {s['steps']} training steps per variant, {s['windows']} windows per set.",
             "", "| Variant | held-out ppl | " + " | ".join(names.get(n, n) for n in sets) + " |",
             "|---|---|" + "---|" * len(sets)]
    for row in rows.values():
        g = summary(row, agg)
        cells = [" / ".join(f"{g[f'{n} {m}']:.2f}" for m in MODE_NAMES) for n in sets]
        lines.append(f"| {row['label']} | {row['sets']['held-out']['none']['ppl']:.3f} | " + " | ".join(cells) + " |")
    sets = ["held-out"] + ood
    lines += ["", "Cross-entropy in nats per byte (no thinking / thinking longer / + self-verification / + Langevin)"
              " and energy evaluations per token:", "",
              "| Variant | " + " | ".join(sets) + " | NFE |", "|---|" + "---|" * (len(sets) + 1)]
    for row in rows.values():
        r0 = row["sets"]["held-out"]
        lines.append(f"| {row['label']} | " + " | ".join(" / ".join(f"{row['sets'][n][m]['ce']:.3f}" for m in MODES)
                                                     for n in sets)
                     + " | " + "/".join(str(r0[m]["nfe_per_token"]) for m in MODES) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, ood: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results["variants"].values())
    agg = comparable_sets(results, ood)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    width = 0.8 / len(MODE_NAMES)
    for ax, where in zip(axes, ("held-out", "OOD")):
        for j, (mode, name) in enumerate(MODE_NAMES.items()):
            vals = [summary(r, agg)[f"{where} {mode}"] for r in rows]
            ax.bar([i + width * (j - (len(MODE_NAMES) - 1) / 2) for i in range(len(rows))], vals, width=width,
                   label=name)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_title("held-out split" if where == "held-out" else f"OOD: {' + '.join(agg) or 'no comparable set'}")
    axes[0].set_ylabel("% perplexity improvement from thinking")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
