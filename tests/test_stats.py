"""Significance of a difference between two cells: scipy's t-tests, their intervals, and the seeds for 80% power."""

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import report, stats, sweeps
from gpt2_jax.errors import ConfigError, UserError
from tests.test_experiments import tiny_sweep


def test_cells_run_on_the_same_seeds_are_compared_paired_by_seed():
    a = {0: 1.0, 1: 2.0, 2: 3.5, 3: 4.0}
    b = {0: 0.5, 1: 1.8, 2: 2.9, 3: 3.9}
    c = stats.compare(a, b)
    d = np.array([0.5, 0.2, 0.6, 0.1])
    assert c.test == "paired t" and c.seeds == 4
    assert c.difference == pytest.approx(d.mean())
    assert c.p_value == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue)
    half = scipy_stats.t.ppf(0.975, 3) * d.std(ddof=1) / math.sqrt(4)
    assert (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c.significant == (c.p_value < 0.05)


def test_cells_on_different_seeds_get_welchs_test():
    a, b = {0: 1.0, 1: 1.2, 2: 0.9}, {5: 2.0, 6: 2.5, 7: 1.7, 8: 2.2}
    c = stats.compare(a, b)
    want = scipy_stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    assert c.test == "Welch t" and c.seeds == 3
    assert c.p_value == pytest.approx(want.pvalue)
    assert c.ci_low < c.difference < c.ci_high < 0
    assert stats.compare({0: 1.0}, b) is None


@pytest.mark.parametrize("power", [stats.power_paired, stats.power_two_sample])
def test_power_rises_with_seeds_and_effect_and_a_quarter_sd_needs_many(power):
    assert power(0.5, 10) < power(0.5, 20) < power(1.0, 20)
    assert power(2.0, 2) < 0.8 < power(2.0, 10)


def test_seeds_for_power_is_the_smallest_count_that_reaches_80_percent():
    a = {s: 1.0 + 0.1 * s for s in range(3)}
    b = {s: 1.05 + 0.1 * s + (0.2 if s == 1 else 0.0) for s in range(3)}
    c = stats.compare(a, b)
    assert not c.significant
    effect = abs(c.difference) / np.std(np.array(list(a.values())) - np.array(list(b.values())), ddof=1)
    n = c.seeds_for_power
    assert stats.power_paired(effect, n) >= 0.8 > stats.power_paired(effect, n - 1)


def test_the_report_tests_every_cell_against_its_reference(tmp_path):
    sweep = sweeps.load(f"{tiny_sweep(tmp_path)}:ok")
    sweep.seeds = [0, 1, 2]
    rows = []
    for label, values in (("a", [3.0, 3.1, 3.2]), ("b", [2.0, 2.2, 2.1])):
        row = {"labels": {"model": label}, "per_seed": {"loss": dict(enumerate(values))}}
        rows.append(row)
    text = report.comparison_table(rows, sweep)
    line = next(line for line in text.splitlines() if line.startswith("| b | a |"))
    c = stats.compare(dict(enumerate([2.0, 2.2, 2.1])), dict(enumerate([3.0, 3.1, 3.2])))
    assert f"{c.difference:+.3f}" in line and "paired t" in line and "| yes |" in line
    assert "| a | a |" not in text


def test_tuning_keeps_each_cells_best_learning_rate_on_the_validation_metric(tmp_path):
    sweep = sweeps.load(f"{tiny_sweep(tmp_path)}:ok")
    sweep.axes = [*sweep.axes, ("lr", [("1e-3", {}), ("3e-3", {})])]
    sweep.tune = "lr"
    sweep.tune_metric = sweeps.Metric("val loss", "results.best_eval_loss", higher_is_better=False)

    def row(model, lr, val_loss, test_loss):
        return {
            "labels": {"model": model, "lr": lr},
            "val loss": (val_loss, 0.0),
            "loss": (test_loss, 0.0),
            "per_seed": {"loss": {0: test_loss, 1: test_loss + 0.01}},
        }

    rows = [
        row("a", "1e-3", 2.0, 2.5),
        row("a", "3e-3", 1.5, 2.9),
        row("b", "1e-3", 1.2, 1.0),
        row("b", "3e-3", 1.3, 0.5),
    ]
    tuned = report.tuned_rows(rows, sweep)
    # Chosen on validation, never on the test metric it then reports.
    assert [(r["labels"]["model"], r["labels"]["lr"]) for r in tuned] == [("a", "3e-3"), ("b", "1e-3")]
    assert sweep.reference_labels() == {"model": "a"}
    table = report.comparison_table(tuned, sweep)
    assert "| b / 1e-3 | a / 3e-3 |" in table


def test_a_tuned_sweeps_report_has_the_tuned_table_and_the_tuning_plot(tmp_path, monkeypatch):
    sweep = sweeps.load(f"{tiny_sweep(tmp_path)}:ok")
    sweep.axes = [*sweep.axes, ("lr", [("1e-3", {"optimizer.learning_rate": 1e-3}), ("3e-3", {})])]
    sweep.tune, sweep.seeds = "lr", [0, 1]
    records = [
        {
            "labels": {"model": model, "lr": lr},
            "seed": seed,
            "status": {"state": "done", "results": {"final_eval_loss": loss + 0.01 * seed, "num_params": 1}},
            "history": [],
            "config": {},
            "vocab_size": 0,
        }
        for model, lr, loss in (("a", "1e-3", 2.0), ("a", "3e-3", 1.5), ("b", "1e-3", 1.2), ("b", "3e-3", 1.3))
        for seed in (0, 1)
    ]
    monkeypatch.setattr(report, "collect", lambda workdir: records)  # what a finished sweep directory gives
    report.write(tmp_path, sweep)
    text = (tmp_path / "report.md").read_text()
    assert "## Each cell at its best lr (chosen on loss, mean over seeds)" in text
    tuned_table = text.split("## Each cell at its best lr")[1].split("## Tests")[0]
    assert "| a | 3e-3 |" in tuned_table and "| b | 1e-3 |" in tuned_table and "| a | 1e-3 |" not in tuned_table
    assert (tmp_path / "tuning.png").stat().st_size > 0


def test_a_sweeps_curve_is_drawn_from_each_cells_mean_at_every_point(tmp_path, monkeypatch):
    sweep = sweeps.load(f"{tiny_sweep(tmp_path)}:ok")
    points = [(x, sweeps.Metric(f"loss at {x}", f"results.eval.cut_{x}.loss", higher_is_better=False)) for x in (1, 2)]
    sweep.curve, sweep.seeds = sweeps.Curve("cut", points, file="cut_curve.png"), [0, 1]
    assert [m.name for m in sweep.report_metrics()][-2:] == ["loss at 1", "loss at 2"], "the curve's metrics are read"
    records = [
        {
            "labels": {"model": model},
            "seed": seed,
            "status": {
                "state": "done",
                "results": {
                    "final_eval_loss": 1.0,
                    "num_params": 1,
                    "eval": {f"cut_{x}": {"loss": base + x + seed} for x in (1, 2)},
                },
            },
            "history": [],
            "config": {},
            "vocab_size": 0,
        }
        for model, base in (("a", 0.0), ("b", 10.0))
        for seed in (0, 1)
    ]
    monkeypatch.setattr(report, "collect", lambda workdir: records)
    drawn = {}
    plt = report.pyplot()
    real_errorbar = plt.Axes.errorbar

    def errorbar(self, xs, means, **kwargs):
        drawn[kwargs["label"]] = (list(xs), list(means), list(kwargs["yerr"]))
        return real_errorbar(self, xs, means, **kwargs)

    monkeypatch.setattr(plt.Axes, "errorbar", errorbar)
    report.write(tmp_path, sweep)
    assert drawn["a"] == ([1, 2], [1.5, 2.5], [pytest.approx(0.7071, abs=1e-4)] * 2)
    assert drawn["b"][1] == [11.5, 12.5]
    assert (tmp_path / "cut_curve.png").stat().st_size > 0
    assert "![cut_curve.png](cut_curve.png)" in (tmp_path / "report.md").read_text()


def test_a_sweep_tuned_on_seed_0_runs_the_other_seeds_only_at_each_cells_choice(tmp_path, monkeypatch, capsys):
    from experiments import runner

    spec, workdir = f"{tiny_sweep(tmp_path)}:tuned", tmp_path / "sw"
    sweep = sweeps.load(spec)
    val_loss = {("a", "1e-3"): 2.0, ("a", "3e-3"): 1.5, ("b", "1e-3"): 1.2, ("b", "3e-3"): 1.3}
    ran: list[list[str]] = []

    def fake_execute(todo, parallel, launcher, address, workers):  # each run finishes at once with its loss
        ran.append(sorted(d.name for d in todo))
        for run_dir in todo:
            run = json.loads((run_dir / "run.json").read_text())
            loss = val_loss[run["labels"]["model"], run["labels"]["lr"]] + 0.01 * run["seed"]
            results = {"best_eval_loss": loss, "final_eval_loss": loss, "num_params": 1}
            (run_dir / "status.json").write_text(json.dumps({"state": "done", "results": results}))

    monkeypatch.setattr(runner, "execute", fake_execute)
    # A seed-1 run of a rate seed 0 does not choose, left from an earlier choice, with a far better loss: it must not
    # change the choice, which is made on the tuning seeds alone.
    stale = sweep.chosen_runs({("a",): "1e-3"})[0]
    sweeps.prepare(sweep, workdir, [stale])
    (workdir / "runs" / stale.name / "status.json").write_text(
        json.dumps({"state": "done", "results": {"best_eval_loss": 0.1, "final_eval_loss": 0.1, "num_params": 1}})
    )
    runner.run_sweep(sweep, workdir, spec, runner.Options())
    runner.run_sweep(sweep, workdir, spec, runner.Options())  # everything finished: nothing runs again
    assert ran[0] == ["a__1e-3__s0", "a__3e-3__s0", "b__1e-3__s0", "b__3e-3__s0"]
    assert ran[1] == ["a__3e-3__s1", "a__3e-3__s2", "b__1e-3__s1", "b__1e-3__s2"]
    assert ran[2:] == [[], []]
    assert report.chosen_labels(workdir, sweep) == {("a",): "3e-3", ("b",): "1e-3"}
    text = (workdir / "report.md").read_text()
    tuned_table = text.split("## Each cell at its best lr (chosen on val loss, mean over seeds 0)")[1].split("##")[0]
    assert "| a | 3e-3 | 1.510 ± 0.010 | 3 |" in tuned_table and "| b | 1e-3 | 1.210 ± 0.010 | 3 |" in tuned_table
    val_loss["b", "1e-3"] = val_loss["b", "3e-3"] = math.nan  # b's tuning runs diverged: b waits, loudly
    for name in ("b__1e-3__s0", "b__3e-3__s0"):
        (workdir / "runs" / name / "status.json").unlink()
    runner.run_sweep(sweep, workdir, spec, runner.Options())
    assert ran[-2:] == [["b__1e-3__s0", "b__3e-3__s0"], []]
    assert "b: lr not chosen: no finished run on seeds [0], other seeds wait" in capsys.readouterr().out


def test_a_grid_extended_past_its_edge_runs_only_the_new_rates_and_moves_the_choice(tmp_path, monkeypatch, capsys):
    from experiments import runner

    spec, workdir = f"{tiny_sweep(tmp_path)}:tuned", tmp_path / "sw"
    sweep = sweeps.load(spec)
    ran: list[list[str]] = []

    def fake_execute(todo, parallel, launcher, address, workers):  # the loss falls with the rate: 1e-2 is best
        ran.append(sorted(d.name for d in todo))
        for run_dir in todo:
            run = json.loads((run_dir / "run.json").read_text())
            loss = 1.0 / float(run["labels"]["lr"]) * 1e-3
            results = {"best_eval_loss": loss, "final_eval_loss": loss, "num_params": 1}
            (run_dir / "status.json").write_text(json.dumps({"state": "done", "results": results}))

    monkeypatch.setattr(runner, "execute", fake_execute)
    runner.run_sweep(sweep, workdir, spec, runner.Options())
    assert report.chosen_labels(workdir, sweep) == {("a",): "3e-3", ("b",): "3e-3"}, "the grid's edge"
    model, rates = sweep.axes[0], sweep.axes[1][1]
    wider = dataclasses.replace(sweep, axes=[model, ("lr", [*rates, ("1e-2", {"optimizer.learning_rate": 1e-2})])])
    capsys.readouterr()
    runner.run_sweep(wider, workdir, spec, runner.Options())
    assert "the sweep gains 2 cells: a__1e-2, b__1e-2" in capsys.readouterr().out
    assert ran[2:] == [["a__1e-2__s0", "b__1e-2__s0"], ["a__1e-2__s1", "a__1e-2__s2", "b__1e-2__s1", "b__1e-2__s2"]]
    assert report.chosen_labels(workdir, wider) == {("a",): "1e-2", ("b",): "1e-2"}
    narrower = dataclasses.replace(sweep, axes=[model, ("lr", rates[:1])])
    with pytest.raises(UserError, match=r"holds another sweep \(cells only in the directory: \['a__1e-2', 'a__3e-3'"):
        runner.run_sweep(narrower, workdir, spec, runner.Options())


def test_cells_flag_runs_only_the_matching_cells_in_both_stages(tmp_path, monkeypatch):
    from experiments import runner

    spec, workdir = f"{tiny_sweep(tmp_path)}:tuned", tmp_path / "sw"
    sweep = dataclasses.replace(sweeps.load(spec), only_cells="^b$")
    ran: list[list[str]] = []

    def fake_execute(todo, parallel, launcher, address, workers):
        ran.append(sorted(d.name for d in todo))
        for run_dir in todo:
            results = {"best_eval_loss": 1.0, "final_eval_loss": 1.0, "num_params": 1}
            (run_dir / "status.json").write_text(json.dumps({"state": "done", "results": results}))

    monkeypatch.setattr(runner, "execute", fake_execute)
    runner.run_sweep(sweep, workdir, spec, runner.Options())
    assert ran == [["b__1e-3__s0", "b__3e-3__s0"], ["b__1e-3__s1", "b__1e-3__s2"]]
    assert sorted(d.name for d in (workdir / "runs").iterdir()) == sorted([*ran[0], *ran[1]])
    assert "| a | 1e-3 | — | 0 |" in (workdir / "report.md").read_text(), "the report still lists every cell"
    with pytest.raises(ConfigError, match=r"matches none of the cells: a; b"):
        dataclasses.replace(sweep, only_cells="^c$")
    with pytest.raises(ConfigError, match="is not a regular expression"):
        dataclasses.replace(sweep, only_cells="(")


def _finished_runs(root, cell_values: dict[str, dict[int, float]]) -> None:
    for cell, per_seed in cell_values.items():
        for seed, value in per_seed.items():
            run_dir = root / "runs" / f"{cell}__s{seed}"
            run_dir.mkdir(parents=True)
            status = {"state": "done", "results": {"eval": {"reverse": {"rank": value}}}}
            (run_dir / "status.json").write_text(json.dumps(status))
    unfinished = root / "runs" / "forward-only__s9"
    unfinished.mkdir()
    (unfinished / "status.json").write_text(json.dumps({"state": "running"}))


def test_compare_cli_tests_two_cells_paired_by_seed_and_a_cell_against_a_constant(tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO

    forward, control = {0: 95.8, 1: 101.5, 2: 101.7}, {0: 1.0, 1: 1.2, 2: 0.9}
    _finished_runs(tmp_path, {"forward-only": forward, "control": control})

    def compare(*args):
        cmd = [sys.executable, "-m", "experiments.compare", str(tmp_path), "--metric=results.eval.reverse.rank", *args]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)

    paired = compare("--a=forward-only", "--b=control")
    assert paired.returncode == 0, paired.stderr[-2000:]
    want = scipy_stats.ttest_rel(list(forward.values()), list(control.values()))
    line = paired.stdout.splitlines()[-1]
    assert f"p = {want.pvalue:.3g}, paired t, 3 seeds" in line and line.startswith("forward-only - control: +98.63")
    chance = compare("--a=forward-only", "--against=100.5")
    want = scipy_stats.ttest_1samp(list(forward.values()), 100.5)
    assert f"p = {want.pvalue:.3g}, one-sample t, 3 seeds; seeds for 80% power:" in chance.stdout
    assert "s9" not in chance.stdout  # the unfinished run is not counted
    missing = compare("--a=forward-only", "--b=nothing")
    assert missing.returncode == 2 and "no finished run of cell 'nothing'" in missing.stderr
    both = compare("--a=forward-only", "--b=control", "--against=1")
    assert both.returncode == 2 and "either --b" in both.stderr
