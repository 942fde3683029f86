"""Scaling fits: least squares of ln(metric) on ln(x), the scaling rate −slope with a bootstrap interval, and the
relative rate of two models (docs/scaling.md gives the formulas).

An observation is one finished run: (x, metric) with x the scaled quantity (tokens, parameters, width, ...) and the
metric a perplexity or a loss. The bootstrap resamples observations (points and seeds together) with replacement.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BOOT = 2000
MIN_DISTINCT = 3
"""Fewer distinct x values than this: a rate but no interval."""


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """(slope, intercept, R²) of the least-squares line ln y = intercept + slope ln x."""
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    slope, intercept = np.polyfit(lx, ly, 1)
    residual = ly - (intercept + slope * lx)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = 1.0 - (residual ** 2).sum() / total if total > 0 else float("nan")
    return float(slope), float(intercept), float(r2)


def _boot_lines(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, boot: int) -> tuple[np.ndarray, np.ndarray]:
    """(slopes, intercepts) of the least-squares lines of `boot` resamples of the observations, all at once
    (resamples with a single distinct x have no line and are left out)."""
    lx, ly = np.log(x), np.log(y)
    pick = rng.integers(0, len(x), (boot, len(x)))                  # (boot, n)
    bx, by = lx[pick], ly[pick]
    dx = bx - bx.mean(axis=1, keepdims=True)
    var = (dx ** 2).sum(axis=1)
    keep = var > 1e-12 * max(1.0, float((lx ** 2).max()))
    slopes = (dx * (by - by.mean(axis=1, keepdims=True))).sum(axis=1)[keep] / var[keep]
    return slopes, by.mean(axis=1)[keep] - slopes * bx.mean(axis=1)[keep]


def _boot_slopes(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, boot: int) -> np.ndarray:
    return _boot_lines(x, y, rng, boot)[0]


def band(x: Sequence[float], y: Sequence[float], grid: Sequence[float], boot: int = 500,
         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% pointwise band (lo, hi) of the fitted power law on `grid`, from bootstrap resamples."""
    slopes, intercepts = _boot_lines(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64),
                                     np.random.default_rng(seed), boot)
    lines = np.exp(intercepts[:, None] + slopes[:, None] * np.log(np.asarray(grid, dtype=np.float64))[None])
    return np.percentile(lines, 2.5, axis=0), np.percentile(lines, 97.5, axis=0)


def scaling_rate(x: Sequence[float], y: Sequence[float], boot: int = BOOT, seed: int = 0) -> dict:
    """{"rate": −slope, "ci": [lo, hi] (95%, percentile bootstrap), "r2", "n", "intercept"}."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.unique(x).size < 2:
        return {"rate": float("nan"), "ci": [float("nan")] * 2, "r2": float("nan"), "n": len(x),
                "intercept": float("nan")}
    slope, intercept, r2 = fit_line(x, y)
    lo = hi = float("nan")
    if np.unique(x).size >= MIN_DISTINCT:   # with two x values every resample is the same line
        lo, hi = np.percentile(-_boot_slopes(x, y, np.random.default_rng(seed), boot), [2.5, 97.5])
    return {"rate": -slope, "ci": [float(lo), float(hi)], "r2": r2, "n": int(len(x)), "intercept": intercept}


def relative_rate(a: tuple[Sequence[float], Sequence[float]], b: tuple[Sequence[float], Sequence[float]],
                  boot: int = BOOT, seed: int = 0) -> dict:
    """rate_a / rate_b − 1 in %, with a 95% interval from resampling each model's observations independently.
    Undefined (nan) when model b's rate is not positive."""
    (xa, ya), (xb, yb) = [(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)) for x, y in (a, b)]
    if np.unique(xa).size < 2 or np.unique(xb).size < 2:
        return {"pct": float("nan"), "ci": [float("nan")] * 2}
    ra, rb = -fit_line(xa, ya)[0], -fit_line(xb, yb)[0]
    if min(np.unique(xa).size, np.unique(xb).size) < MIN_DISTINCT:
        return {"pct": 100.0 * (ra / rb - 1.0) if rb > 0 else float("nan"), "ci": [float("nan")] * 2}
    rng = np.random.default_rng(seed)
    boot_a, boot_b = -_boot_slopes(xa, ya, rng, boot), -_boot_slopes(xb, yb, rng, boot)
    k = min(len(boot_a), len(boot_b))
    boot_a, boot_b = boot_a[:k], boot_b[:k]
    valid = boot_b > 0
    pct = 100.0 * (ra / rb - 1.0) if rb > 0 else float("nan")
    if valid.sum() < boot // 2:
        return {"pct": pct, "ci": [float("nan")] * 2}
    lo, hi = np.percentile(100.0 * (boot_a[valid] / boot_b[valid] - 1.0), [2.5, 97.5])
    return {"pct": pct, "ci": [float(lo), float(hi)]}


def fmt_ci(value: float, ci: Sequence[float], digits: int = 3) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
