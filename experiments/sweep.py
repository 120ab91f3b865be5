"""Run a sweep: ``python -m experiments.sweep --sweep=configs/sweeps/NAME.py[:variant] --workdir=DIR``.

Expands the sweep into named runs under ``DIR/runs/``, runs each in its own
process (sequentially, ``--parallel=N`` at a time, or on a Ray cluster with
``--launcher=ray``), skips runs that already finished (so a killed sweep
resumes where it stopped; an unfinished run resumes from its own
checkpoints), records a failed run's error without stopping the others, and
writes the report at the end.  ``--dry_run`` lists the runs with their
parameter and FLOP counts.  A sweep with ``tune_seeds`` runs in two stages:
every learning rate (its tuned axis) on those seeds, then the other seeds at
the rate each cell chose; the report chooses the same way.

One sweep process at a time owns a sweep directory, and one worker a run
directory (each holds a lock naming its pid).  A directory that holds another
sweep (another name, other cells, or a cell with another config) is refused
before anything is written.  SIGTERM or SIGINT stops the workers (each saves a
checkpoint) and the sweep exits; the same command continues it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from absl import app, flags

from experiments import report, sweeps
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


def status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"state": "new"}


class Workers:
    """The worker subprocesses of a local sweep; a signal stops them all and starts no more."""

    def __init__(self):
        self.stopping = False
        self._running: set[subprocess.Popen] = set()
        self._guard = threading.Lock()

    def run(self, run_dir: Path) -> dict:
        """The worker in a subprocess; its output goes to ``run_dir/log.txt``."""
        with self._guard:
            if self.stopping:
                return status(run_dir)
            log = (run_dir / "log.txt").open("a")
            proc = subprocess.Popen(
                [sys.executable, "-m", "experiments.worker", f"--run_dir={run_dir}"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self._running.add(proc)
        try:
            proc.wait()
        finally:
            log.close()
            with self._guard:
                self._running.discard(proc)
        return status(run_dir)

    def stop(self, signum: int, frame) -> None:
        """Signal handler: pass SIGTERM on to every worker (each saves a checkpoint and exits)."""
        with self._guard:
            self.stopping = True
            for proc in self._running:
                proc.terminate()


def run_local(run_dir: Path) -> dict:
    """One worker, in a subprocess (the Ray launcher's task)."""
    return Workers().run(run_dir)


def execute(todo: list[Path], parallel: int, launcher: str, ray_address: str | None, workers: Workers) -> None:
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
        futures = {pool.submit(workers.run, run_dir): run_dir for run_dir in todo}
        for future in concurrent.futures.as_completed(futures):
            print(f"{futures[future].name}: {future.result()['state']}", flush=True)


def dry_run(sweep: sweeps.Sweep) -> None:
    cells = len(sweep.cells())
    if sweep.tune_seeds:
        others = [s for s in sweep.seeds if s not in sweep.tune_seeds]
        chosen = cells // len(dict(sweep.axes)[sweep.tune])
        print(
            f"sweep {sweep.name}: {len(sweep.tuning_runs())} tuning runs ({cells} cells x seeds {sweep.tune_seeds}), "
            f"then {chosen * len(others)} runs ({chosen} cells at their chosen {sweep.tune} x seeds {others})"
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
        if _DRY_RUN.value:
            dry_run(sweep)
            return
        files.ensure_writable_dir(workdir, "sweep directory")
        with files.DirectoryLock(workdir, "sweep directory"):
            run_sweep(sweep, workdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run_stage(runs: list[tuple[sweeps.RunSpec, Path]], workers: Workers, name: str) -> None:
    """Run those of ``runs`` that have not finished (a failed one again, unless --noretry_failed)."""
    todo = []
    for _, run_dir in runs:
        state = status(run_dir)["state"]
        if state == "done" or (state == "failed" and not _RETRY_FAILED.value):
            continue
        todo.append(run_dir)
    print(f"{name}: {len(runs) - len(todo)} of {len(runs)} runs already finished; running {len(todo)}", flush=True)
    execute(todo, _PARALLEL.value, _LAUNCHER.value, _RAY_ADDRESS.value, workers)


def run_sweep(sweep: sweeps.Sweep, workdir: Path) -> None:
    """Check the directory, write the runs' configs, run what is left, report."""
    record = sweeps.definition(sweep, _SWEEP.value)
    if (workdir / "sweep.json").exists():
        diffs = sweeps.definition_differences(files.read_json(workdir / "sweep.json", "the sweep's definition"), record)
        if diffs:
            raise UserError(
                f"{workdir} holds another sweep ({'; '.join(diffs[:4])}); use another --workdir for this one"
            )
    first = sweeps.prepare(sweep, workdir, sweep.tuning_runs())
    files.write_json(workdir / "sweep.json", record)
    start = time.time()
    workers = Workers()
    previous = {sig: signal.signal(sig, workers.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run_stage(first, workers, sweep.name)
        if sweep.tune_seeds and not workers.stopping:
            chosen = report.chosen_labels(workdir, sweep)
            for cell in dict.fromkeys(sweep.untuned(labels) for labels, _ in sweep.cells()):
                label = chosen.get(cell, f"not chosen: no finished run on seeds {sweep.tune_seeds}, other seeds wait")
                print(f"{' / '.join(cell)}: {sweep.tune} {label}", flush=True)
            run_stage(sweeps.prepare(sweep, workdir, sweep.chosen_runs(chosen)), workers, f"{sweep.name}, chosen")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if workers.stopping:
        print("stopped by a signal; the workers saved their runs. Re-run the same command to continue")
        sys.exit(1)
    print(f"sweep took {time.time() - start:.0f} s")
    print(report.write(workdir, sweep))


if __name__ == "__main__":
    app.run(main)
