"""Sweep reports: ``python -m experiments.report DIR`` writes ``DIR/report.md`` and PNG plots.

One row per cell with mean +- std over seeds (and the number of seeds), the
cell's parameters, training FLOPs per example, tokens with loss and wall time,
and a line saying what the comparison matched.  Plots: learning curves
(evaluation loss against step, mean and spread over seeds) and a bar chart of
the main metric with standard-deviation error bars.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from absl import app

from experiments import scaling, stats, sweeps
from gpt2_jax import files
from gpt2_jax.data import paths
from gpt2_jax.errors import UserError
from gpt2_jax.metrics_writer import read_metrics


def value_at(record: dict, path: str) -> float | None:
    """The number at a dotted ``path`` of a run's status (``results.eval.test.loss``); None when absent."""
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else None


def collect(workdir: Path) -> list[dict]:
    """Every run of a sweep directory: its labels, seed, status and metric history."""
    records = []
    for run_dir in sorted((workdir / "runs").glob("*")):
        if not (run_dir / "run.json").exists():
            continue
        spec = json.loads((run_dir / "run.json").read_text())
        try:
            status = json.loads((run_dir / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            status = {"state": "new"}
        history, vocab = [], 0
        resolved = run_dir / "train" / "config.json"
        if resolved.exists():
            vocab = json.loads(resolved.read_text())["model"]["vocab_size"]
        history = read_metrics(run_dir / "train")
        records.append(
            {
                "name": spec["name"],
                "labels": spec["labels"],
                "seed": spec["seed"],
                "status": status,
                "history": history,
                "config": spec["config"],
                "vocab_size": vocab,
            }
        )
    return records


def _present(runs: list[dict], path: str) -> list[float]:
    """The value at ``path`` of every run that has it."""
    return [v for r in runs if (v := value_at(r["status"], path)) is not None]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; NaN for none, or when a seed diverged (its loss is NaN)."""
    if not values or any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(records: list[dict], sweep: sweeps.Sweep) -> list[dict]:
    """Per cell (in the sweep's order): metric means and stds over finished seeds, and the cell's costs."""
    by_cell: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by_cell[tuple(r["labels"].values())].append(r)
    rows = []
    for labels, overrides in sweep.cells():
        key = tuple(labels.values())
        runs = [r for r in by_cell.get(key, []) if r["status"].get("state") == "done"]
        row: dict[str, Any] = {
            "labels": labels,
            "seeds": len(runs),
            "failed": sum(r["status"].get("state") == "failed" for r in by_cell.get(key, [])),
        }
        cell = " / ".join(labels.values())
        row["per_seed"] = {}
        for metric in sweep.report_metrics():
            applies = metric.applies(cell)
            per_seed = {
                r["seed"]: v * metric.scale
                for r in runs
                if applies and (v := value_at(r["status"], metric.path)) is not None
            }
            row["per_seed"][metric.name] = per_seed
            row[metric.name] = mean_std(list(per_seed.values()))
        config = sweeps.apply(sweep.base, overrides)
        vocab = next((r["vocab_size"] for r in runs if r["vocab_size"]), 0)
        row["params"] = next((value_at(r["status"], "results.num_params") for r in runs), None)
        row["flops"] = None
        try:
            row["params"] = row["params"] or sweeps.param_count(config, vocab)
            row["flops"] = sweep.flops_per_example(config, vocab)
        except Exception:
            pass
        # One example per row (text windows): the scaling curves' compute.
        row["train_flops"] = row["flops"] * config.batch_size * config.num_train_steps if row["flops"] else None
        row["loss_tokens"] = mean_std(_present(runs, "results.loss_tokens_seen"))[0]
        row["wall_time"] = mean_std(_present(runs, "results.wall_time_s"))[0]
        row["curves"] = [[(e["step"], e["loss"]) for e in r["history"] if e["split"] == "eval"] for r in runs]
        rows.append(row)
    return rows


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.2f}M"
    return f"{x:.{digits}f}"


def _count(x: float | None) -> str:
    """Counts (parameters, tokens): exact integers below a million, ``1.23M`` above."""
    if x is None or math.isnan(x) or abs(x) >= 1e6:
        return _fmt(x)
    return f"{x:,.0f}"


def table(rows: list[dict], sweep: sweeps.Sweep) -> str:
    axes = [name for name, _ in sweep.axes]
    head = [
        *axes,
        *(m.name for m in sweep.metrics),
        "seeds",
        "params",
        "train FLOPs/example",
        "tokens with loss",
        "wall s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = list(row["labels"].values())
        for m in sweep.metrics:
            mean, std = row[m.name]
            cells.append(f"{_fmt(mean)} ± {_fmt(std)}" if not math.isnan(mean) else "—")
        cells += [
            str(row["seeds"]) + (f" ({row['failed']} failed)" if row["failed"] else ""),
            _count(row["params"]),
            _fmt(row["flops"]),
            _count(row["loss_tokens"]),
            _fmt(row["wall_time"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tuning_value(row: dict, sweep: sweeps.Sweep) -> tuple[float, float]:
    """Mean and std of a row's tune metric over the seeds that choose the tuned label (all, without tune_seeds)."""
    metric = sweep.tune_metric or sweep.main_metric
    if not sweep.tune_seeds:
        return row[metric.name]
    return mean_std([v for seed, v in row["per_seed"][metric.name].items() if seed in sweep.tune_seeds])


def tuned_rows(rows: list[dict], sweep: sweeps.Sweep) -> list[dict]:
    """For each combination of the untuned axes, the row whose tune metric has the best mean over the tuning
    seeds."""
    better = max if (sweep.tune_metric or sweep.main_metric).higher_is_better else min
    candidates: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for row in rows:
        if not math.isnan(tuning_value(row, sweep)[0]):
            candidates[sweep.untuned(row["labels"])].append(row)
    return [better(c, key=lambda row: tuning_value(row, sweep)[0]) for c in candidates.values()]


def chosen_labels(workdir: Path, sweep: sweeps.Sweep) -> dict[tuple[str, ...], str]:
    """The tuned label each combination of the untuned axes keeps, from the runs finished in ``workdir``."""
    rows = tuned_rows(aggregate(collect(workdir), sweep), sweep)
    return {sweep.untuned(row["labels"]): row["labels"][sweep.tune] for row in rows}


def comparison_table(rows: list[dict], sweep: sweeps.Sweep) -> str:
    """The main metric of every row against its reference row: difference, 95% CI, p, and the seeds it would need."""
    metric = sweep.main_metric
    by_labels = {sweep.untuned(r["labels"]): r for r in rows}
    lines = [
        f"Each row's {metric.name} minus its reference row's; paired by seed where both ran the same seeds, else "
        f"Welch. Significant at p < {stats.ALPHA}. Seeds for power: per cell, for an 80% chance to detect a "
        "difference of this size.",
        "",
        "| cell | reference | difference (95% CI) | p | test | seeds | significant | seeds for power |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ref = by_labels.get(sweep.untuned({**row["labels"], **sweep.reference_labels()}))
        if ref is None or ref is row:
            continue
        c = stats.compare(row["per_seed"][metric.name], ref["per_seed"][metric.name])
        cell, ref_cell = " / ".join(row["labels"].values()), " / ".join(ref["labels"].values())
        if c is None:
            lines.append(f"| {cell} | {ref_cell} | — | — | — | — | fewer than 2 seeds | — |")
            continue
        needed = "—" if c.significant else (f"{c.seeds_for_power}" if c.seeds_for_power else "> 1000")
        lines.append(
            f"| {cell} | {ref_cell} | {c.difference:+.3f} ({c.ci_low:+.3f}, {c.ci_high:+.3f}) | {c.p_value:.3g} | "
            f"{c.test} | {c.seeds} | {'yes' if c.significant else 'no'} | {needed} |"
        )
    return "\n".join(lines)


def matching_table(sweep: sweeps.Sweep) -> str:
    """Parameters and FLOPs per example of every cell, relative to the first cell (for ``--dry_run``)."""
    lines = ["| cell | params | vs first | train FLOPs/example | vs first |", "|---|---|---|---|---|"]
    ref = None
    for labels, overrides in sweep.cells():
        config = sweeps.apply(sweep.base, overrides)
        p = sweeps.param_count(config)
        f = sweep.flops_per_example(config) or math.nan
        ref = ref or (p, f)
        lines.append(
            f"| {' / '.join(labels.values())} | {p:,} | {p / ref[0]:.2f} | {f / 1e6:.2f}M | {f / ref[1]:.2f} |"
        )
    return "\n".join(lines)


def pyplot():
    """``matplotlib.pyplot`` without a display, its font cache in the project's cache directory (not ``$HOME``)."""
    os.environ.setdefault("MPLCONFIGDIR", str(paths.cache_dir() / "matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(rows: list[dict], sweep: sweeps.Sweep, workdir: Path) -> list[str]:
    import numpy as np

    plt = pyplot()

    pictures = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        curves = [c for c in row["curves"] if c]
        if not curves:
            continue
        steps = [s for s, _ in curves[0]]
        n = min(len(c) for c in curves)
        values = np.array([[v for _, v in c[:n]] for c in curves])
        mean, std = values.mean(0), values.std(0)
        label = " / ".join(row["labels"].values())
        ax.plot(steps[:n], mean, label=label)
        ax.fill_between(steps[:n], mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_yscale("log")
    ax.set_title(f"{sweep.name}: learning curves (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(workdir / "learning_curves.png", dpi=120)
    plt.close(fig)
    pictures.append("learning_curves.png")

    metric = sweep.main_metric
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 2), 5))
    names = [" / ".join(r["labels"].values()) for r in rows]
    means = [r[metric.name][0] for r in rows]
    stds = [r[metric.name][1] for r in rows]
    first_axis = [next(iter(r["labels"].values())) for r in rows]
    palette = {v: plt.cm.tab10(i % 10) for i, v in enumerate(dict.fromkeys(first_axis))}
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color=[palette[v] for v in first_axis])
    ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(metric.name + (" (higher is better)" if metric.higher_is_better else " (lower is better)"))
    counts = sorted({r["seeds"] for r in rows if r["seeds"]}) or [0]
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    ax.set_title(f"{sweep.name}: {metric.name}, mean ± std over {seeds} seeds")
    fig.tight_layout()
    fig.savefig(workdir / "main_metric.png", dpi=120)
    plt.close(fig)
    pictures.append("main_metric.png")
    return pictures


def plot_tuning(rows: list[dict], sweep: sweeps.Sweep, workdir: Path) -> str:
    """The tuning metric against the tuned axis's labels, one line per combination of the other axes (over the
    tuning seeds)."""
    plt = pyplot()
    metric = sweep.tune_metric or sweep.main_metric
    tune_labels = [label for axis, values in sweep.axes if axis == sweep.tune for label, _ in values]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in dict.fromkeys(sweep.untuned(r["labels"]) for r in rows):
        points = [
            (tune_labels.index(r["labels"][sweep.tune]), tuning_value(r, sweep))
            for r in rows
            if sweep.untuned(r["labels"]) == key
        ]
        points = [(x, m, s) for x, (m, s) in points if not math.isnan(m)]
        if points:
            xs, means, stds = zip(*sorted(points), strict=True)
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=" / ".join(key))
    ax.set_xticks(range(len(tune_labels)), tune_labels)
    ax.set_xlabel(sweep.tune)
    ax.set_ylabel(metric.name + (" (higher is better)" if metric.higher_is_better else " (lower is better)"))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(workdir / "tuning.png", dpi=120)
    plt.close(fig)
    return "tuning.png"


def plot_curve(rows: list[dict], sweep: sweeps.Sweep, workdir: Path) -> str:
    """``sweep.curve``: each cell's metric at every point (mean ± std over seeds)."""
    plt = pyplot()
    curve = sweep.curve
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        points = [(x, *row[m.name]) for x, m in curve.points if not math.isnan(row[m.name][0])]
        if points:
            xs, means, stds = zip(*points, strict=True)
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=" / ".join(row["labels"].values()))
    metric = curve.points[0][1]
    ax.set_xlabel(curve.x_label)
    better = " (higher is better)" if metric.higher_is_better else " (lower is better)"
    ax.set_ylabel(metric.name.split(" at ")[0] + better)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(workdir / curve.file, dpi=120)
    plt.close(fig)
    return curve.file


def scaling_section(rows: list[dict], sweep: sweeps.Sweep, workdir: Path) -> str:
    """The main metric against training FLOPs along ``sweep.scaling``: fits, crossings, and ``scaling.png``."""
    metric = sweep.main_metric
    curves: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    runs: dict[str, list[tuple[float, float]]] = defaultdict(list)  # (compute, value) of every seed
    for row in rows:
        mean, std = row[metric.name]
        if row["train_flops"] and not math.isnan(mean):
            name = " / ".join(v for k, v in row["labels"].items() if k not in (sweep.scaling, sweep.tune))
            curves[name].append((row["train_flops"], mean, std))
            runs[name] += [(row["train_flops"], v) for v in row["per_seed"][metric.name].values()]
    fits = {name: f for name, points in runs.items() if (f := scaling.fit(points))}
    scaling.plot(curves, fits, workdir / "scaling.png", metric.name)
    return scaling.table(fits)


def write(workdir: Path, sweep: sweeps.Sweep) -> str:
    """Write ``report.md`` and the plots; return the table."""
    records = collect(workdir)
    rows = aggregate(records, sweep)
    md = table(rows, sweep)
    failed = [r for r in records if r["status"].get("state") == "failed"]
    pictures = plot(rows, sweep, workdir)
    parts = [f"# {sweep.name}", sweep.hypothesis.strip(), f"**Matched:** {sweep.matched}", md]
    if sweep.tune:
        tuned = tuned_rows(rows, sweep)
        chooser = (sweep.tune_metric or sweep.main_metric).name
        md = table(tuned, sweep)
        over = f"seeds {', '.join(map(str, sweep.tune_seeds))}" if sweep.tune_seeds else "seeds"
        parts += [f"## Each cell at its best {sweep.tune} (chosen on {chooser}, mean over {over})", md]
        pictures.append(plot_tuning(rows, sweep, workdir))  # every tuned label, not only the best
        rows = tuned
    if sweep.curve:
        pictures.append(plot_curve(rows, sweep, workdir))
    if sweep.scaling:
        parts.append("## Scaling\n\n" + scaling_section(rows, sweep, workdir))
        pictures.append("scaling.png")
    parts += [
        "## Tests against the reference\n\n" + comparison_table(rows, sweep),
        *(f"![{p}]({p})" for p in pictures),
    ]
    if failed:
        parts.append("## Failed runs\n" + "\n".join(f"- `{r['name']}`: {r['status'].get('error')}" for r in failed))
    files.write_text(workdir / "report.md", "\n\n".join(parts) + "\n")
    return md


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError("usage: python -m experiments.report SWEEP_DIR")
    workdir = Path(argv[1])
    try:
        if not (workdir / "sweep.json").exists():
            raise UserError(f"{workdir} holds no sweep (no sweep.json); pass the --workdir of experiments.sweep")
        record = files.read_json(workdir / "sweep.json", "the sweep's definition")
        sweep = sweeps.load(record["sweep"])
        if "seeds" in record:  # the seeds the sweep ran with (`experiments.sweep --seeds`)
            sweep = dataclasses.replace(sweep, seeds=record["seeds"], tune_seeds=record.get("tune_seeds", []))
        print(write(workdir, sweep))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
