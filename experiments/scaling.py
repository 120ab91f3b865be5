"""Scaling curves: a metric against training FLOPs per architecture, a power-law fit each, and where curves cross.

A sweep with a ``scaling`` axis (model sizes) gets, per value of its other
untuned axes, one curve of the main metric (loss, lower is better) against the
cell's training FLOPs; ``L = a * C^-b`` is fitted by least squares in log-log
space (``scipy.stats.linregress``) over every seed's run, and for every pair of
curves the compute ``C*`` at which the fits meet, ``ln C* = (ln a1 - ln a2) /
(b1 - b2)``, is stated inside, beyond or before the measured range, beside a
t-test of the two exponents (a crossing needs them to differ).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
from scipy import stats

from experiments.stats import ALPHA


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """``L = a * C^-b`` fitted to ``points`` (C, L); ``r2`` of the log-log fit, ``b_stderr`` the standard error
    of the exponent (NaN with two points: a line through them has no residual)."""

    a: float
    b: float
    r2: float
    points: tuple[tuple[float, float], ...]
    b_stderr: float = math.nan

    def __call__(self, compute: np.ndarray | float) -> np.ndarray | float:
        return self.a * np.power(compute, -self.b)


def fit(points: list[tuple[float, float]]) -> PowerLaw | None:
    """The power law through ``[(training FLOPs, loss), ...]`` (one point per run: seeds repeat a compute value);
    None below two distinct compute values."""
    points = sorted(points)
    if len({c for c, _ in points}) < 2:
        return None
    log_c, log_l = np.log([c for c, _ in points]), np.log([v for _, v in points])
    line = stats.linregress(log_c, log_l)
    stderr = float(line.stderr) if len(points) > 2 else math.nan
    return PowerLaw(float(math.exp(line.intercept)), float(-line.slope), float(line.rvalue**2), tuple(points), stderr)


@dataclasses.dataclass(frozen=True)
class ExponentDifference:
    """``first.b - second.b`` with its 95% confidence interval and two-sided p-value."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


def exponent_difference(first: PowerLaw, second: PowerLaw) -> ExponentDifference | None:
    """t-test of two independent regression slopes: t = (b1 - b2) / sqrt(se1^2 + se2^2) on n1 + n2 - 4 degrees of
    freedom; None when either fit has no standard error."""
    if math.isnan(first.b_stderr) or math.isnan(second.b_stderr):
        return None
    difference = first.b - second.b
    se = math.hypot(first.b_stderr, second.b_stderr)
    df = len(first.points) + len(second.points) - 4
    if se == 0:
        return ExponentDifference(difference, difference, difference, 0.0 if difference else 1.0)
    half = stats.t.ppf(1 - ALPHA / 2, df) * se
    p = float(2 * stats.t.sf(abs(difference) / se, df))
    return ExponentDifference(difference, difference - half, difference + half, p)


def crossing(first: PowerLaw, second: PowerLaw) -> float | None:
    """The compute at which the two fits give the same loss; None for parallel fits."""
    if math.isclose(first.b, second.b, rel_tol=1e-9):
        return None
    return math.exp((math.log(first.a) - math.log(second.a)) / (first.b - second.b))


def describe_crossing(name: tuple[str, str], first: PowerLaw, second: PowerLaw) -> str:
    """One line: where the curves of ``name[0]`` and ``name[1]`` meet, relative to the compute measured, and
    whether their exponents differ significantly."""
    measured = [c for fit_ in (first, second) for c, _ in fit_.points]
    low, high = min(measured), max(measured)
    c = crossing(first, second)
    if c is None:
        where = "parallel fits, they never cross"
    elif c > high:
        where = f"the fits would cross at {c:.3g} FLOPs, {c / high:.3g}x beyond the largest run (an extrapolation)"
    elif c < low:
        where = f"the fits met at {c:.3g} FLOPs, below the smallest run; above it they part"
    else:
        where = f"the fits cross at {c:.3g} FLOPs, inside the measured range"
    test = exponent_difference(first, second)
    if test is None:
        return f"{name[0]} and {name[1]}: {where}; no test of the exponents (a fit of two points)"
    verdict = "they differ" if test.significant else "no significant difference, so no evidence that the curves meet"
    return (
        f"{name[0]} and {name[1]}: {where}; exponent difference {test.difference:+.4f} "
        f"({test.ci_low:+.4f}, {test.ci_high:+.4f}), p = {test.p_value:.2g}: {verdict}"
    )


def table(fits: dict[str, PowerLaw]) -> str:
    lines = [
        "Training FLOPs = FLOPs per example x rows per step x steps. Fit: L = a * C^-b, least squares on log-log "
        "over every run (one point per seed); b ± its standard error. Crossings: where the fits give the same "
        "loss, with a t-test of the two exponents (slopes of independent fits, n1 + n2 - 4 degrees of freedom).",
        "",
        "| curve | points | a | b | R² |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {len(f.points)} | {f.a:.4g} | {f.b:.4f} ± {f.b_stderr:.4f} | {f.r2:.3f} |"
        for name, f in fits.items()
    ]
    names = list(fits)
    pairs = [(x, y) for i, x in enumerate(names) for y in names[i + 1 :]]
    lines += ["", *(f"- {describe_crossing((x, y), fits[x], fits[y])}" for x, y in pairs)]
    return "\n".join(lines)


def plot(curves: dict[str, list[tuple[float, float, float]]], fits: dict[str, PowerLaw], path: Path, ylabel: str):
    """Each curve's (compute, mean, std) points with error bars and its fit, on log-log axes."""
    from experiments.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    every = [c for points in curves.values() for c, _, _ in points]
    span = np.geomspace(min(every) / 2, max(every) * 4, 50)
    for i, (name, points) in enumerate(curves.items()):
        color = plt.cm.tab10(i % 10)
        xs, means, stds = zip(*sorted(points), strict=True)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, linestyle="none", color=color, label=name)
        if name in fits:
            f = fits[name]
            ax.plot(span, f(span), color=color, alpha=0.6, label=f"{name}: {f.a:.3g}·C^-{f.b:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
