"""Run a sweep: ``python -m experiments.sweep --sweep=configs/sweeps/NAME.py[:variant] --workdir=DIR``.

Expands the sweep into named runs under ``DIR/runs/``, runs each in its own
process (sequentially, ``--parallel=N`` at a time, or on a Ray cluster with
``--launcher=ray``), skips runs that already finished (so a killed sweep
resumes where it stopped; an unfinished run resumes from its own
checkpoints), records a failed run's error without stopping the others, and
writes the report at the end.  ``--dry_run`` lists the runs with their
parameter and FLOP counts.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

from experiments import report, sweeps

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep config file[:variant].", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.", required=True)
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at a time (local launcher).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the runs with parameters and FLOPs; run nothing.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "ray"], "Where runs execute.")
_RAY_ADDRESS = flags.DEFINE_string("ray_address", None, "Ray cluster address (None = start a local one).")
_RETRY_FAILED = flags.DEFINE_bool("retry_failed", True, "Re-run runs that failed before.")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds to run (default: the sweep's own); recorded for the report.")


def status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"state": "new"}


def run_local(run_dir: Path) -> dict:
    """The worker in a subprocess; its output goes to ``run_dir/log.txt``."""
    with (run_dir / "log.txt").open("a") as log:
        subprocess.run(
            [sys.executable, "-m", "experiments.worker", f"--run_dir={run_dir}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return status(run_dir)


def execute(todo: list[Path], parallel: int, launcher: str, ray_address: str | None) -> None:
    if launcher == "ray":
        import ray

        ray.init(address=ray_address, ignore_reinit_error=True, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(run_local)
        pending = {remote.remote(run_dir): run_dir for run_dir in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            run_dir = pending.pop(done[0])
            print(f"{run_dir.name}: {ray.get(done[0])['state']}", flush=True)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(run_local, run_dir): run_dir for run_dir in todo}
        for future in concurrent.futures.as_completed(futures):
            print(f"{futures[future].name}: {future.result()['state']}", flush=True)


def dry_run(sweep: sweeps.Sweep) -> None:
    print(f"sweep {sweep.name}: {len(sweep.runs())} runs ({len(sweep.cells())} cells x {len(sweep.seeds)} seeds)")
    print(f"matched: {sweep.matched}")
    print(report.matching_table(sweep))


def main(argv: list[str]) -> None:
    del argv
    sweep = sweeps.load(_SWEEP.value)
    if _SEEDS.value:
        sweep = dataclasses.replace(sweep, seeds=[int(seed) for seed in _SEEDS.value])
    if _DRY_RUN.value:
        dry_run(sweep)
        return
    workdir = Path(_WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    record = {"sweep": _SWEEP.value, "name": sweep.name, "seeds": sweep.seeds}
    (workdir / "sweep.json").write_text(json.dumps(record, indent=2))
    runs = sweeps.prepare(sweep, workdir)
    todo = []
    for _, run_dir in runs:
        state = status(run_dir)["state"]
        if state == "done" or (state == "failed" and not _RETRY_FAILED.value):
            continue
        todo.append(run_dir)
    print(f"{sweep.name}: {len(runs) - len(todo)} of {len(runs)} runs already finished; running {len(todo)}")
    start = time.time()
    execute(todo, _PARALLEL.value, _LAUNCHER.value, _RAY_ADDRESS.value)
    print(f"sweep took {time.time() - start:.0f} s")
    print(report.write(workdir, sweep))


if __name__ == "__main__":
    app.run(main)
