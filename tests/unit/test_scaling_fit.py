"""The scaling fits (ebt/experiments/fitting.py) against synthetic points with known exponents, and the FLOP and
parameter counters (ebt/training/flops.py)."""
import numpy as np
import pytest
import torch

from ebt.experiments.fitting import fit_line, relative_rate, scaling_rate
from ebt.training.flops import matmul_flops, parameter_counts


def power_law(rate: float, noise: float, seed: int, seeds: int = 3):
    rng = np.random.default_rng(seed)
    x = np.repeat([1e5, 3e5, 1e6, 3e6, 1e7], seeds)
    return x, 50.0 * x ** (-rate) * np.exp(noise * rng.standard_normal(len(x)))


def test_exact_power_law_is_recovered():
    x, y = power_law(0.3, 0.0, 0)
    slope, intercept, r2 = fit_line(x, y)
    assert slope == pytest.approx(-0.3, abs=1e-12) and intercept == pytest.approx(np.log(50.0)) and r2 == pytest.approx(1)
    fit = scaling_rate(x, y)
    assert fit["rate"] == pytest.approx(0.3) and fit["ci"][0] == pytest.approx(0.3) and fit["ci"][1] == pytest.approx(0.3)


def test_noisy_rates_have_intervals_that_cover_the_truth():
    covered = 0
    for seed in range(40):
        x, y = power_law(0.2, 0.05, seed)
        lo, hi = scaling_rate(x, y, boot=400, seed=seed)["ci"]
        covered += lo <= 0.2 <= hi
    assert covered >= 30          # nominal 95%; a percentile bootstrap on 15 points under-covers a little


def test_relative_rate_of_two_power_laws():
    a, b = power_law(0.26, 0.0, 0), power_law(0.2, 0.0, 1)
    rel = relative_rate(a, b, boot=200)
    assert rel["pct"] == pytest.approx(30.0) and rel["ci"][0] == pytest.approx(30.0)
    noisy = relative_rate(power_law(0.26, 0.05, 2), power_law(0.2, 0.05, 3), boot=400)
    assert noisy["ci"][0] < noisy["pct"] < noisy["ci"][1] and noisy["ci"][0] < 30 < noisy["ci"][1]
    assert np.isnan(scaling_rate([1, 1], [2, 3])["rate"])       # one distinct x: no line


def test_matmul_flops_of_a_linear_layer_and_parameter_counts():
    layer = torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(3, 8, requires_grad=True)
    # forward 2*3*8*4, backward: grad wrt input and wrt weight, each the same
    assert matmul_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 3 * 8 * 4
    model = torch.nn.ModuleDict({"embeddings": torch.nn.Embedding(10, 4), "block": torch.nn.Linear(4, 4),
                                 "output": torch.nn.Linear(4, 10, bias=False)})
    assert parameter_counts(model) == {"params": 40 + 20 + 40, "params_non_embedding": 20}


def test_every_budget_builds_a_valid_config_for_every_axis(tmp_path):
    """Each ladder point of each budget is a valid run config (heads divide widths, ...), and points of different
    learning rates never share a run."""
    from ebt.experiments.scaling import AXES, BUDGETS, MODELS, plan, run_name, text_point

    for budget in BUDGETS.values():
        names = {}
        for point in plan(budget, AXES, MODELS, 1):
            cfg = text_point(budget, point, tmp_path)
            names.setdefault(run_name(cfg), set()).add(cfg.optim.lr)
        assert all(len(lrs) == 1 for lrs in names.values()), budget.name
