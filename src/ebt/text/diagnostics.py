"""Why thinking helps or does not: measurements of an EBT's descent and of its energies on held-out windows
(`ebt eval thinking --diagnostics`, `ebt.thinking_diagnostics`).

For every scored position, N candidates descend from their own noise (the trained schedule, or the given options):
- verifier: how often the lowest final energy picks a candidate with the lowest cross-entropy (chance: 1/N when the
  candidates differ; ties count as hits), and the tie-aware Spearman rank correlation of final energy and
  cross-entropy across the N (mean over positions where neither is constant);
- diversity: the mean total-variation distance between the N final distributions, the mean spread (max - min) of
  their cross-entropies and the share of positions whose candidates all reach the same cross-entropy: selection
  cannot help candidates that all reach one point;
- calibration (the first candidate: a plain descent, though from other noise than `ebt eval`'s): AUROC of a per-token score for
  predicting a wrong argmax: the final energy, the prediction's entropy, 1 - its top probability, and the
  Transformer++'s entropy and 1 - top probability when one is given; reliability bins (confidence vs accuracy)
  and the expected calibration error;
- convergence: mean energy before each step and mean cross-entropy after it, over every candidate;
- the confidence pathology: mean cross-entropy of the first candidate and of the best-of-N choice against ln V
  (a uniform guess), and the largest per-token cross-entropy.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import torch
from torch import Tensor, nn

from ebt import noise
from ebt.text.data import PackedWindows
from ebt.text.inference import think
from ebt.text.models import PAD_ID
from ebt.thinking import ThinkOptions

RELIABILITY_BINS = 10


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    """Per-token cross-entropy: logits (..., L, V), targets broadcast to (..., L) -> (..., L) float64 (the log-softmax
    in float32, on the logits' device: one (..., L, V) temporary)."""
    logp = torch.log_softmax(logits.float(), -1)
    return -logp.gather(-1, y.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1).double()


def _ranks(t: Tensor, dim: int) -> Tensor:
    """Average ranks along `dim` (tied values share their mean rank: candidates that collapsed onto one point tie)."""
    from scipy.stats import rankdata   # scipy comes with scikit-learn, a core dependency

    return torch.from_numpy(rankdata(t.double().numpy(), axis=dim)).double()


def _spearman(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """Rank correlation of a and b along `dim`, tie-aware; NaN where either is constant."""
    ra, rb = _ranks(a, dim), _ranks(b, dim)
    ra, rb = ra - ra.mean(dim, keepdim=True), rb - rb.mean(dim, keepdim=True)
    return (ra * rb).sum(dim) / (ra.square().sum(dim) * rb.square().sum(dim)).sqrt()


def _mean_tv(p: Tensor) -> Tensor:
    """Mean pairwise total-variation distance between the N distributions p (B, N, L, V) -> (B, L)."""
    n = p.shape[1]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    return torch.stack([0.5 * (p[:, i] - p[:, j]).abs().sum(-1) for i, j in pairs]).mean(0)


def auroc(score: Tensor, wrong: Tensor) -> Optional[float]:
    """Area under the ROC curve of `score` for predicting `wrong` (1: a perfect ranking, 0.5: chance); None when
    every token is right or every token is wrong."""
    if wrong.all() or not wrong.any():
        return None
    from sklearn.metrics import roc_auc_score   # scikit-learn is a core dependency (embedded image sets)

    return float(roc_auc_score(wrong.numpy(), score.numpy()))


def reliability(confidence: Tensor, correct: Tensor, bins: int = RELIABILITY_BINS) -> tuple[list[dict], float]:
    """Per confidence bin: mean confidence, accuracy, tokens; and the expected calibration error."""
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence, edges[1:-1])      # bin of each token, 0 .. bins-1
    rows, ece, n = [], 0.0, len(confidence)
    for b in range(bins):
        sel = which == b
        if sel.any():
            conf, acc, count = confidence[sel].mean().item(), correct[sel].double().mean().item(), int(sel.sum())
            rows.append({"low": edges[b].item(), "high": edges[b + 1].item(), "confidence": conf, "accuracy": acc,
                         "tokens": count})
            ece += count / n * abs(acc - conf)
    return rows, ece


@torch.no_grad()
def thinking_diagnostics(model: nn.Module, windows: PackedWindows, options: Optional[ThinkOptions] = None,
                         samples: int = 5, max_windows: int = 16, batch_size: int = 8, seed: int = 1234,
                         transformer: Optional[nn.Module] = None) -> dict:
    """The measurements of the module docstring over the first `max_windows` windows of an EBT `model`."""
    if samples < 2:
        raise ValueError("the verifier needs at least 2 samples per position")
    if options is not None and options.tol is not None:
        raise ValueError("diagnostics compare steps across positions: adaptive stopping (tol) is not supported")
    opts = replace(options or ThinkOptions(), samples=samples)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    keys = ("hit", "spearman", "tv", "spread", "collapsed", "energy", "ce0", "ce_pick", "entropy", "max_prob",
            "correct", "tpp_entropy", "tpp_max_prob")
    col: dict[str, list[Tensor]] = {k: [] for k in keys}
    step_energy, step_ce, tokens = None, None, 0
    n = min(len(windows), max_windows)
    for start in range(0, n, batch_size):
        index = list(range(start, min(n, start + batch_size)))
        batch = windows.batch(index).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        rows = [w * samples + j for w in index for j in range(samples)]    # as `token_scores` keys the noise
        with noise.per_sample(seed, rows, key=0):
            res = think(model, x, opts, final_energy=True, trace=True)
        keep = (y != PAD_ID).cpu()                                          # (B, L)
        ce_steps = torch.stack([_ce(z, y[:, None]) for z in res.trace["logits"]]).cpu()   # (steps, B, N, L)
        trace = {k: res.trace[k].cpu() for k in ("energies", "final_energy", "pick")}
        trace["final_logits"] = res.trace["logits"][-1].cpu()             # (B, N, L, V)
        y = y.cpu()
        ce = ce_steps[-1]                                                   # (B, N, L) final, per candidate
        energy = trace["final_energy"].double()                             # (B, N, L)
        probs = trace["final_logits"].float().softmax(-1)                   # (B, N, L, V)
        chosen = ce.gather(1, energy.argmin(1, keepdim=True)).squeeze(1)   # CE of the lowest-energy candidate
        col["hit"].append((chosen <= ce.amin(1))[keep])
        col["spearman"].append(_spearman(energy, ce, 1)[keep])
        col["tv"].append(_mean_tv(probs).double()[keep])
        col["spread"].append((ce.amax(1) - ce.amin(1))[keep])
        col["collapsed"].append((ce.amax(1) == ce.amin(1))[keep])
        p0 = probs[:, 0].double()                                           # (B, L, V) the first candidate
        col["energy"].append(energy[:, 0][keep])
        col["ce0"].append(ce[:, 0][keep])
        col["ce_pick"].append(ce.gather(1, trace["pick"][:, None]).squeeze(1)[keep])
        col["entropy"].append(torch.special.entr(p0).sum(-1)[keep])
        col["max_prob"].append(p0.amax(-1)[keep])
        col["correct"].append((p0.argmax(-1) == y)[keep])
        if transformer is not None:
            pt = transformer.predict(x).logits.double().softmax(-1).cpu()  # (B, L, V)
            col["tpp_entropy"].append(torch.special.entr(pt).sum(-1)[keep])
            col["tpp_max_prob"].append(pt.amax(-1)[keep])
        m = keep[None, :, None, :].double()                                 # (1, B, 1, L)
        e_sum = (trace["energies"].double() * m).sum((1, 2, 3))             # (steps,)
        c_sum = (ce_steps * m).sum((1, 2, 3))
        step_energy = e_sum if step_energy is None else step_energy + e_sum
        step_ce = c_sum if step_ce is None else step_ce + c_sum
        tokens += int(keep.sum())
    model.train(was_training)
    cat = {k: torch.cat(v) for k, v in col.items() if v}
    wrong = ~cat["correct"]
    per_candidate = tokens * samples
    vocab = model.cfg.vocab_size
    rows_, ece = reliability(cat["max_prob"], cat["correct"])
    scores = {"energy": cat["energy"], "entropy": cat["entropy"], "one_minus_max_prob": 1 - cat["max_prob"]}
    if transformer is not None:
        scores.update(tpp_entropy=cat["tpp_entropy"], tpp_one_minus_max_prob=1 - cat["tpp_max_prob"])
    spearman = cat["spearman"][~cat["spearman"].isnan()]
    return {
        "samples": samples, "tokens": tokens, "alpha": model.thinker.step_size().item() * opts.alpha_scale
        if opts.alpha is None else opts.alpha * opts.alpha_scale,
        "verifier": {"hit_rate": cat["hit"].double().mean().item(), "chance": 1 / samples,
                     "spearman": spearman.mean().item() if len(spearman) else float("nan")},
        "diversity": {"total_variation": cat["tv"].mean().item(), "ce_spread": cat["spread"].mean().item(),
                      "collapsed": cat["collapsed"].double().mean().item()},
        "calibration": {"accuracy": cat["correct"].double().mean().item(),
                        "auroc_wrong": {k: auroc(v, wrong) for k, v in scores.items()},
                        "ece": ece, "reliability": rows_},
        "convergence": {"energy_before_step": (step_energy / per_candidate).tolist(),
                        "ce_after_step": (step_ce / per_candidate).tolist()},
        "ce": {"first_candidate": cat["ce0"].mean().item(), "best_of_n": cat["ce_pick"].mean().item(),
               "uniform": math.log(vocab), "max_token": cat["ce0"].max().item(),
               "worse_than_uniform": cat["ce0"].mean().item() > math.log(vocab)},
    }


def diagnostics_table(results: dict[str, dict]) -> str:
    """One row per data set: the verifier, diversity, calibration and pathology numbers."""
    head = ("| set | tokens | lowest energy = lowest CE (chance) | Spearman(E, CE) | TV between candidates | "
            "CE spread | all candidates tie | AUROC wrong: energy / entropy / 1-max p | T++ AUROC: entropy / 1-max p | "
            "ECE | CE: first / best-of-N / ln V | worst token CE |")
    lines = [head, "|" + "---|" * 12]

    def f(v) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
    for name, r in results.items():
        a = r["calibration"]["auroc_wrong"]
        lines.append(
            f"| {name} | {r['tokens']} | {f(r['verifier']['hit_rate'])} ({f(r['verifier']['chance'])}) | "
            f"{f(r['verifier']['spearman'])} | {f(r['diversity']['total_variation'])} | "
            f"{f(r['diversity']['ce_spread'])} | {f(r['diversity']['collapsed'])} | {f(a['energy'])} / {f(a['entropy'])} / "
            f"{f(a['one_minus_max_prob'])} | {f(a.get('tpp_entropy'))} / {f(a.get('tpp_one_minus_max_prob'))} | "
            f"{f(r['calibration']['ece'])} | {f(r['ce']['first_candidate'])} / {f(r['ce']['best_of_n'])} / "
            f"{f(r['ce']['uniform'])} | {f(r['ce']['max_token'])} |")
    return "\n".join(lines) + "\n"


def diagnostics_plot(results: dict[str, dict], path) -> None:
    """Per set: the reliability diagram and the energy / cross-entropy per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4 * len(results), 6.4), squeeze=False)
    for k, (name, r) in enumerate(results.items()):
        rel = r["calibration"]["reliability"]
        ax = axes[0][k]
        ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1)
        ax.plot([b["confidence"] for b in rel], [b["accuracy"] for b in rel], "o-")
        ax.set(title=f"{name}: reliability (ECE {r['calibration']['ece']:.3f})", xlabel="top probability",
               ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax = axes[1][k]
        conv = r["convergence"]
        steps = range(1, len(conv["ce_after_step"]) + 1)
        ax.plot(steps, conv["ce_after_step"], "o-", label="CE after step")
        ax.axhline(r["ce"]["uniform"], color="gray", ls=":", label="ln V (uniform)")
        ax.set(xlabel=f"step (alpha {r['alpha']:.3g})", ylabel="cross-entropy (nats)", xticks=list(steps))
        twin = ax.twinx()
        twin.plot(steps, conv["energy_before_step"], "s--", color="tab:orange", label="energy before step")
        twin.set_ylabel("energy")
        lines = ax.get_lines() + twin.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
