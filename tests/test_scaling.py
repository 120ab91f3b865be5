"""Scaling curves: power-law fits, where two fits cross, and the report's scaling section."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import report, scaling, sweeps
from tests.test_experiments import tiny_sweep


def test_fit_recovers_an_exact_power_law():
    compute = [1e12, 1e13, 1e14]
    f = scaling.fit([(c, 5.0 * c**-0.05) for c in compute])
    assert f.a == pytest.approx(5.0) and f.b == pytest.approx(0.05) and f.r2 == pytest.approx(1.0)
    assert f(1e15) == pytest.approx(5.0 * 1e15**-0.05)
    assert scaling.fit([(1e12, 2.0), (1e12, 2.1)]) is None, "one compute value fits nothing"


def test_crossing_is_where_the_fits_give_the_same_loss_and_says_where_that_lies():
    steep, flat = scaling.fit([(1e12, 3.0), (1e14, 2.0)]), scaling.fit([(1e12, 2.5), (1e14, 2.2)])
    c = scaling.crossing(steep, flat)
    assert steep(c) == pytest.approx(flat(c))
    assert 1e12 < c < 1e14
    assert "inside the measured range" in scaling.describe_crossing(("steep", "flat"), steep, flat)
    # The laggard falls faster but is far behind: the fits would meet only beyond the runs.
    late = scaling.fit([(1e12, 4.0), (1e14, 2.9)])
    line = scaling.describe_crossing(("late", "flat"), late, flat)
    assert "would cross at" in line and "beyond the largest run (an extrapolation)" in line
    assert scaling.crossing(late, flat) > 1e14
    parallel = scaling.fit([(1e12, 6.0), (1e14, 4.0)])  # the same ratio: the same exponent
    assert scaling.crossing(steep, parallel) is None
    assert "never cross" in scaling.describe_crossing(("a", "b"), steep, parallel)


def test_the_exponent_test_equals_the_interaction_term_of_one_regression_over_both_curves():
    # With the same compute values in both curves, t = (b1 - b2) / sqrt(se1^2 + se2^2) on n1 + n2 - 4 degrees of
    # freedom is exactly the t of the interaction term in log L = c0 + c1 log C + c2 g + c3 g log C.
    rng = np.random.default_rng(0)
    compute = np.repeat([1e12, 1e13, 1e14], 3)
    first = [(c, 4.0 * c**-0.05 * np.exp(rng.normal(0, 0.01))) for c in compute]
    second = [(c, 6.0 * c**-0.06 * np.exp(rng.normal(0, 0.01))) for c in compute]
    test = scaling.exponent_difference(scaling.fit(first), scaling.fit(second))
    x = np.log(np.concatenate([compute, compute]))
    g = np.repeat([1.0, 0.0], len(compute))
    design = np.stack([np.ones_like(x), x, g, g * x], axis=1)
    y = np.log([v for _, v in first + second])
    coef, residual, *_ = np.linalg.lstsq(design, y, rcond=None)
    df = len(y) - 4
    se = np.sqrt(residual[0] / df * np.linalg.inv(design.T @ design)[3, 3])
    assert test.difference == pytest.approx(-coef[3])  # b is minus the slope
    assert test.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(coef[3]) / se, df))
    half = scipy_stats.t.ppf(0.975, df) * se
    assert (test.ci_low, test.ci_high) == pytest.approx((-coef[3] - half, -coef[3] + half))
    assert test.significant and "they differ" in scaling.describe_crossing(
        ("a", "b"), scaling.fit(first), scaling.fit(second)
    )
    same = [(c, 5.0 * c**-0.05 * np.exp(rng.normal(0, 0.01))) for c in compute]
    line = scaling.describe_crossing(("a", "c"), scaling.fit(first), scaling.fit(same))
    assert "no significant difference, so no evidence that the curves meet" in line
    two_points = scaling.fit([(1e12, 3.0), (1e14, 2.0)])
    assert scaling.exponent_difference(two_points, scaling.fit(first)) is None


def test_the_report_fits_each_architecture_over_the_size_axis(tmp_path, monkeypatch):
    sweep = sweeps.load(f"{tiny_sweep(tmp_path)}:ok")
    sweep.axes = [*sweep.axes, ("width", [("w16", {"model.emb_dim": 16}), ("w32", {"model.emb_dim": 32})])]
    sweep.scaling, sweep.seeds, sweep.example_lengths = "width", [0, 1], (4, 4)
    loss = {("a", "w16"): 3.0, ("a", "w32"): 2.0, ("b", "w16"): 3.2, ("b", "w32"): 2.6}
    records = [
        {
            "labels": {"model": model, "width": width},
            "seed": seed,
            "status": {"state": "done", "results": {"final_eval_loss": value + 0.01 * seed, "num_params": 1}},
            "history": [],
            "config": {},
            "vocab_size": 0,
        }
        for (model, width), value in loss.items()
        for seed in (0, 1)
    ]
    monkeypatch.setattr(report, "collect", lambda workdir: records)
    rows = report.aggregate(records, sweep)
    compute = {tuple(r["labels"].values()): r["train_flops"] for r in rows}
    config = sweeps.apply(sweep.base, {"model.emb_dim": 32, "model.arch": "prefix_lm"})
    per_example = sweeps.example_flops(config, (4, 4))
    assert compute["b", "w32"] == pytest.approx(per_example * config.batch_size * config.num_train_steps)
    report.write(tmp_path, sweep)
    text = (tmp_path / "report.md").read_text()
    section = text.split("## Scaling")[1]
    want = scaling.fit([(compute["a", w], loss["a", w] + 0.01 * seed) for w in ("w16", "w32") for seed in (0, 1)])
    assert f"| a | 4 | {want.a:.4g} | {want.b:.4f} ± {want.b_stderr:.4f} | {want.r2:.3f} |" in section
    assert "- a and b: the fits" in section and "![scaling.png](scaling.png)" in text
    assert (tmp_path / "scaling.png").stat().st_size > 0
