"""Run a sweep: ``python -m experiments.sweep --sweep=configs/sweeps/NAME.py[:variant] --workdir=DIR``.

Expands the sweep into named runs under ``DIR/runs/``, runs each in its own
process (sequentially, ``--parallel=N`` at a time, or on a Ray cluster with
``--launcher=ray``), skips runs that already finished (so a killed sweep
resumes where it stopped; an unfinished run resumes from its own
checkpoints), records a failed run's error without stopping the others, and
writes the report at the end.  ``--dry_run`` lists the runs with their
parameter and FLOP counts; ``--cells=REGEX`` runs part of the sweep (the
cells whose name matches, e.g. ``'op-last / (ED|DO) 2$'``).  A sweep with
``tune_seeds`` runs in two stages: every learning rate (its tuned axis) on
those seeds, then the other seeds at the rate each cell chose; the report
chooses the same way.

One sweep process at a time owns a sweep directory, and one worker a run
directory (each holds a lock naming its pid).  A directory that holds another
sweep (another name, a cell this one lacks, or a cell with another config) is
refused before anything is written; a sweep may gain cells (a learning-rate
grid extended past its edge), and says so.  SIGTERM or SIGINT stops the
workers (each saves a checkpoint) and the sweep exits; the same command
continues it.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from absl import app, flags

from experiments import report, runner, sweeps
from gpt2_jax import files
from gpt2_jax.errors import UserError

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep config file[:variant].", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.", required=True)
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at a time (local launcher).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the runs with parameters and FLOPs; run nothing.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "ray"], "Where runs execute.")
_RAY_ADDRESS = flags.DEFINE_string("ray_address", None, "Ray cluster address (None = start a local one).")
_RETRY_FAILED = flags.DEFINE_bool("retry_failed", True, "Re-run runs that failed before.")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds to run (default: the sweep's own); recorded for the report.")
_CELLS = flags.DEFINE_string(
    "cells", None, "Run only the cells whose name without the tuned label matches this regular expression."
)


def dry_run(sweep: sweeps.Sweep) -> None:
    cells = sum(sweep.selected(labels) for labels, _ in sweep.cells())
    if sweep.tune_seeds:
        others = [s for s in sweep.seeds if s not in sweep.tune_seeds]
        chosen = cells // len(dict(sweep.axes)[sweep.tune])
        at_choice = f"{chosen} cell{'s' * (chosen != 1)} at their chosen {sweep.tune}"
        print(
            f"sweep {sweep.name}: {len(sweep.tuning_runs())} tuning runs ({cells} cells x seeds {sweep.tune_seeds}), "
            f"then {chosen * len(others)} runs ({at_choice} x seeds {others})"
        )
    else:
        print(f"sweep {sweep.name}: {len(sweep.runs())} runs ({cells} cells x {len(sweep.seeds)} seeds)")
    print(f"matched: {sweep.matched}")
    print(report.matching_table(sweep))


def main(argv: list[str]) -> None:
    del argv
    workdir = Path(_WORKDIR.value)
    try:
        sweep = sweeps.load(_SWEEP.value)
        if _SEEDS.value:
            sweep = dataclasses.replace(sweep, seeds=[int(seed) for seed in _SEEDS.value])
        if _CELLS.value:
            sweep = dataclasses.replace(sweep, only_cells=_CELLS.value)
        if _DRY_RUN.value:
            dry_run(sweep)
            return
        files.ensure_writable_dir(workdir, "sweep directory")
        with files.DirectoryLock(workdir, "sweep directory"):
            options = runner.Options(_PARALLEL.value, _LAUNCHER.value, _RAY_ADDRESS.value, _RETRY_FAILED.value)
            runner.run_sweep(sweep, workdir, _SWEEP.value, options)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
