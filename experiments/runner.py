"""Running a sweep's runs: worker subprocesses (or Ray tasks), in one or two stages, then the report.

:func:`run_sweep` checks the sweep directory, writes each run's config, runs
what has not finished (``Options.parallel`` at a time) and writes the report.
A sweep with ``tune_seeds`` runs in two stages: every value of its tuned axis
on those seeds, then the other seeds at the value each cell chose (chosen as
the report chooses).  SIGTERM or SIGINT stops the workers, each saving a
checkpoint; the same call continues.
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

from experiments import report, sweeps
from gpt2_jax import files
from gpt2_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Options:
    """How runs execute: ``parallel`` at a time locally, or as Ray tasks; failed runs again or not."""

    parallel: int = 1
    launcher: str = "local"  # "local" | "ray"
    ray_address: str | None = None
    retry_failed: bool = True


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


def run_stage(runs: list[tuple[sweeps.RunSpec, Path]], workers: Workers, name: str, options: Options) -> None:
    """Run those of ``runs`` that have not finished (a failed one again, if ``options.retry_failed``)."""
    todo = []
    for _, run_dir in runs:
        state = status(run_dir)["state"]
        if state == "done" or (state == "failed" and not options.retry_failed):
            continue
        todo.append(run_dir)
    print(f"{name}: {len(runs) - len(todo)} of {len(runs)} runs already finished; running {len(todo)}", flush=True)
    execute(todo, options.parallel, options.launcher, options.ray_address, workers)


def run_sweep(sweep: sweeps.Sweep, workdir: Path, spec: str, options: Options) -> None:
    """Check the directory, write the runs' configs, run what is left, report (``spec``: the sweep's
    ``path[:variant]``, recorded in ``sweep.json``)."""
    record = sweeps.definition(sweep, spec)
    if (workdir / "sweep.json").exists():
        saved = files.read_json(workdir / "sweep.json", "the sweep's definition")
        diffs = sweeps.definition_differences(saved, record)
        if diffs:
            raise UserError(
                f"{workdir} holds another sweep ({'; '.join(diffs[:4])}); use another --workdir for this one"
            )
        added = [cell for cell in record["cells"] if cell not in saved.get("cells", record["cells"])]
        if added:
            print(f"{workdir}: the sweep gains {len(added)} cells: {', '.join(added)}", flush=True)
    first = sweeps.prepare(sweep, workdir, sweep.tuning_runs())
    files.write_json(workdir / "sweep.json", record)
    start = time.time()
    workers = Workers()
    previous = {sig: signal.signal(sig, workers.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run_stage(first, workers, sweep.name, options)
        if sweep.tune_seeds and not workers.stopping:
            chosen = report.chosen_labels(workdir, sweep)
            cells = dict.fromkeys(sweep.untuned(labels) for labels, _ in sweep.cells() if sweep.selected(labels))
            for cell in cells:
                label = chosen.get(cell, f"not chosen: no finished run on seeds {sweep.tune_seeds}, other seeds wait")
                print(f"{' / '.join(cell)}: {sweep.tune} {label}", flush=True)
            run_stage(
                sweeps.prepare(sweep, workdir, sweep.chosen_runs(chosen)), workers, f"{sweep.name}, chosen", options
            )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if workers.stopping:
        print("stopped by a signal; the workers saved their runs. Re-run the same command to continue")
        sys.exit(1)
    print(f"sweep took {time.time() - start:.0f} s")
    print(report.write(workdir, sweep))
