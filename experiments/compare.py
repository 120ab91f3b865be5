"""Test two cells of a sweep on any metric: ``python -m experiments.compare DIR --metric=PATH --a=CELL --b=CELL``.

A cell is a run directory's name without its seed (``facts-causal-LM`` for
``runs/facts-causal-LM__s0``, ...); ``--metric`` is a dotted path into each
run's ``status.json`` (``results.eval.reverse.ranking.rank_mean``).  Prints
each cell's values per seed and ``a - b`` with its 95% interval, p-value and
test (paired by seed when both cells ran the same seeds, else Welch), or, with
``--against=VALUE`` instead of ``--b``, ``a - VALUE`` by a one-sample t-test
(a rank against chance).  For comparisons a sweep's report does not make.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

from experiments import runner, stats
from experiments.report import mean_std, value_at
from gpt2_jax.errors import UserError

_METRIC = flags.DEFINE_string("metric", None, "Dotted path into status.json.", required=True)
_A = flags.DEFINE_string("a", None, "First cell (run name without __s<seed>).", required=True)
_B = flags.DEFINE_string("b", None, "Second cell.")
_AGAINST = flags.DEFINE_float("against", None, "A constant to test --a against instead of --b.")
_SCALE = flags.DEFINE_float("scale", 1.0, "Multiply every value (1.4427 for nats -> bits, 100 for %).")
_SEEDS = flags.DEFINE_list("seeds", None, "Only these seeds (default: every finished one).")


def values(workdir: Path, cell: str, path: str, scale: float = 1.0, seeds: set[int] | None = None) -> dict[int, float]:
    """``{seed: value * scale}`` over the finished runs of ``cell`` that have ``path``."""
    out = {}
    for run_dir in sorted((workdir / "runs").glob(f"{cell}__s*")):
        seed = run_dir.name.rpartition("__s")[2]
        if not seed.isdigit() or (seeds is not None and int(seed) not in seeds):
            continue
        status = runner.status(run_dir)
        if status["state"] == "done" and (value := value_at(status, path)) is not None:
            out[int(seed)] = value * scale
    if not out:
        raise UserError(f"no finished run of cell {cell!r} in {workdir / 'runs'} has {path!r}")
    return out


def describe(cell: str, per_seed: dict[int, float]) -> str:
    mean, std = mean_std(list(per_seed.values()))
    listed = ", ".join(f"s{seed}: {v:.4g}" for seed, v in sorted(per_seed.items()))
    return f"{cell}: {mean:.4g} ± {std:.3g} ({listed})"


def result_line(what: str, c: stats.Comparison | None) -> str:
    if c is None:
        return f"{what}: fewer than 2 seeds, no test"
    power = "" if c.significant else f"; seeds for 80% power: {c.seeds_for_power or '> 1000'}"
    return (
        f"{what}: {c.difference:+.4g} (95% CI {c.ci_low:+.4g}, {c.ci_high:+.4g}), p = {c.p_value:.3g}, "
        f"{c.test}, {c.seeds} seeds{power}"
    )


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError("usage: python -m experiments.compare SWEEP_DIR --metric=PATH --a=CELL --b=CELL")
    workdir = Path(argv[1])
    seeds = {int(s) for s in _SEEDS.value} if _SEEDS.value else None
    try:
        if (_B.value is None) == (_AGAINST.value is None):
            raise UserError("give either --b (another cell) or --against (a constant)")
        a = values(workdir, _A.value, _METRIC.value, _SCALE.value, seeds)
        print(describe(_A.value, a))
        if _B.value is not None:
            b = values(workdir, _B.value, _METRIC.value, _SCALE.value, seeds)
            print(describe(_B.value, b))
            print(result_line(f"{_A.value} - {_B.value}", stats.compare(a, b)))
        else:
            print(result_line(f"{_A.value} - {_AGAINST.value:g}", stats.compare_to(a, _AGAINST.value)))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
