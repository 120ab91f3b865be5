"""Is a difference between two cells of a sweep a finding? A t-test with a 95% interval, and the seeds it would need.

Runs of one sweep that share a seed share their data order (the seed sets both
the initialisation and the batches), so two cells measured on the same seeds
are compared *paired* by seed (``scipy.stats.ttest_rel``); otherwise Welch's
unequal-variance test (``scipy.stats.ttest_ind(equal_var=False)``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1000


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``a - b`` for one metric: its mean, 95% confidence interval and two-sided p-value."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str  # "paired t" or "Welch t"
    seeds: int  # seeds per cell the test used (the smaller cell's for Welch)
    seeds_for_power: int | None  # seeds per cell for 80% power at this difference; None: none would suffice

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


def compare(a: dict[int, float], b: dict[int, float]) -> Comparison | None:
    """Compare per-seed values ``{seed: value}`` of two cells; None when either has fewer than two seeds."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2 and len(shared) == len(a) == len(b):
        return _paired(np.array([a[s] for s in shared]), np.array([b[s] for s in shared]))
    if len(a) < 2 or len(b) < 2:
        return None
    return _welch(np.array(list(a.values())), np.array(list(b.values())))


def compare_to(a: dict[int, float], value: float) -> Comparison | None:
    """Compare a cell's per-seed values with a constant (e.g. chance) by a one-sample t-test; None below 2 seeds."""
    if len(a) < 2:
        return None
    values = np.array(list(a.values()))
    result = stats.ttest_1samp(values, value)
    low, high = result.confidence_interval(1 - ALPHA)
    d = values - value
    sd = float(np.std(d, ddof=1))
    effect = abs(float(np.mean(d))) / sd if sd > 0 else math.inf
    return Comparison(
        float(np.mean(d)),
        float(low - value),
        float(high - value),
        _p(result.pvalue),
        "one-sample t",
        len(d),
        _seeds_paired(effect),
    )


def _paired(a: np.ndarray, b: np.ndarray) -> Comparison:
    d = a - b
    n = len(d)
    result = stats.ttest_rel(a, b)
    low, high = result.confidence_interval(1 - ALPHA)
    sd = float(np.std(d, ddof=1))
    effect = abs(float(np.mean(d))) / sd if sd > 0 else math.inf
    return Comparison(
        float(np.mean(d)), float(low), float(high), _p(result.pvalue), "paired t", n, _seeds_paired(effect)
    )


def _welch(a: np.ndarray, b: np.ndarray) -> Comparison:
    result = stats.ttest_ind(a, b, equal_var=False)
    low, high = result.confidence_interval(1 - ALPHA)
    pooled = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
    diff = float(np.mean(a) - np.mean(b))
    effect = abs(diff) / pooled if pooled > 0 else math.inf
    seeds = min(len(a), len(b))
    return Comparison(diff, float(low), float(high), _p(result.pvalue), "Welch t", seeds, _seeds_two_sample(effect))


def _p(p: float) -> float:
    return 0.0 if math.isnan(p) else float(p)  # identical values in both cells: no variance, no doubt


def power_paired(effect: float, n: int) -> float:
    """Power of a two-sided paired t-test with ``n`` pairs at standardised effect ``mean(d) / sd(d)``."""
    df = n - 1
    critical = stats.t.ppf(1 - ALPHA / 2, df)
    nc = effect * math.sqrt(n)
    return float(stats.nct.sf(critical, df, nc) + stats.nct.cdf(-critical, df, nc))


def power_two_sample(effect: float, n: int) -> float:
    """Power of a two-sided two-sample t-test with ``n`` seeds per cell at effect ``difference / pooled sd``."""
    df = 2 * n - 2
    critical = stats.t.ppf(1 - ALPHA / 2, df)
    nc = effect * math.sqrt(n / 2)
    return float(stats.nct.sf(critical, df, nc) + stats.nct.cdf(-critical, df, nc))


def _smallest_n(power, effect: float) -> int | None:
    if effect == 0:
        return None
    if math.isinf(effect):
        return 2
    for n in range(2, MAX_SEEDS + 1):
        if power(effect, n) >= POWER:
            return n
    return None


def _seeds_paired(effect: float) -> int | None:
    return _smallest_n(power_paired, effect)


def _seeds_two_sample(effect: float) -> int | None:
    return _smallest_n(power_two_sample, effect)
