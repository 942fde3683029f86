"""Thinking diagnostics (text/diagnostics.py): the metrics against independent computations, and the numbers of a
tiny EBT against the evaluator's."""
import math

import pytest
import torch
from scipy.stats import spearmanr

from ebt.config import ModelConfig, ThinkConfig
from ebt.text.data import PackedWindows
from ebt.text.diagnostics import _spearman, auroc, reliability, thinking_diagnostics
from ebt.text.evaluate import evaluate_text
from ebt.text.models import TextEBT, TextTransformer
from ebt.thinking import ThinkOptions


def test_auroc_of_perfect_reversed_and_undefined_rankings():
    wrong = torch.tensor([False, False, True, True])
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), wrong) == 1.0
    assert auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), wrong) == 0.0
    assert auroc(torch.tensor([0.5, 0.5, 0.5, 0.5]), wrong) == 0.5
    assert auroc(torch.rand(4), torch.zeros(4, dtype=torch.bool)) is None


def test_reliability_bins_and_calibration_error_by_hand():
    conf = torch.tensor([0.05, 0.15, 0.95, 0.95], dtype=torch.float64)
    correct = torch.tensor([False, True, True, False])
    rows, ece = reliability(conf, correct)
    assert [(r["tokens"], r["accuracy"]) for r in rows] == [(1, 0.0), (1, 1.0), (2, 0.5)]
    assert ece == pytest.approx(0.25 * 0.05 + 0.25 * 0.85 + 0.5 * 0.45)


def test_spearman_matches_scipy():
    torch.manual_seed(0)
    a, b = torch.randn(6, 7, dtype=torch.float64), torch.randn(6, 7, dtype=torch.float64)
    ours = _spearman(a, b, 1)
    for i in range(6):
        assert ours[i].item() == pytest.approx(spearmanr(a[i], b[i]).statistic)


def test_diagnostics_of_a_tiny_ebt_agree_with_the_evaluator():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=13, dim=16, layers=2, heads=2, context=8, conditioning="time_embed")
    ebt = TextEBT(cfg, ThinkConfig(landscapes=2, alpha=3.0)).eval()
    tpp = TextTransformer(ModelConfig(kind="transformer", vocab_size=13, dim=16, layers=2, heads=2, context=8)).eval()
    windows = PackedWindows(torch.randint(1, 13, (5 * 9,)), 9)
    r = thinking_diagnostics(ebt, windows, samples=3, max_windows=5, batch_size=2, transformer=tpp)
    assert r["tokens"] == 5 * 8 and r["verifier"]["chance"] == pytest.approx(1 / 3)
    assert 0 <= r["verifier"]["hit_rate"] <= 1 and -1 <= r["verifier"]["spearman"] <= 1
    assert 0 <= r["diversity"]["total_variation"] <= 1 and r["diversity"]["ce_spread"] >= 0
    assert len(r["convergence"]["ce_after_step"]) == len(r["convergence"]["energy_before_step"]) == 2
    assert r["ce"]["uniform"] == pytest.approx(math.log(13))
    assert set(r["calibration"]["auroc_wrong"]) == {"energy", "entropy", "one_minus_max_prob", "tpp_entropy",
                                                     "tpp_one_minus_max_prob"}
    assert sum(b["tokens"] for b in r["calibration"]["reliability"]) == r["tokens"]
    # the best-of-3 choice is what the evaluator scores with samples=3 (same noise keying, lowest final energy)
    best = evaluate_text(ebt, windows, ThinkOptions(samples=3), max_windows=5, batch_size=5)
    assert r["ce"]["best_of_n"] == pytest.approx(best["ce"], rel=1e-6)
