"""One sweep run in its own process: ``python -m experiments.worker --run_dir=DIR``.

Reads ``DIR/run.json`` (the run's config and what to decode afterwards),
trains and evaluates with :func:`gpt2_jax.train.train_and_evaluate` (resuming
from ``DIR``'s checkpoints if any), decodes the requested splits, and writes
``DIR/status.json``: ``{"state": "done", ...}`` or ``{"state": "failed", "error": ...}``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from absl import app, flags

from gpt2_jax import files
from gpt2_jax.errors import UserError

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory holding run.json.", required=True)


def write_status(run_dir: Path, status: dict) -> None:
    """Atomically replace ``status.json`` (a crash never leaves half a file)."""
    files.write_json(run_dir / "status.json", status)


def run(run_dir: Path) -> dict:
    from experiments.sweeps import decode_entry
    from gpt2_jax import experiment, runs, train
    from gpt2_jax import workdir as workdir_lib
    from gpt2_jax.evaluate import decode_split

    spec = json.loads((run_dir / "run.json").read_text())
    config = workdir_lib.saved_config(spec["config"])
    experiment.enable_compilation_cache(config)
    results = train.train_and_evaluate(config, run_dir / "train")
    if results.get("preempted"):
        return results
    decoded = {}
    if spec.get("decode"):
        loaded = runs.load(run_dir / "train")
        for entry in spec["decode"]:
            split, beam_size = decode_entry(entry)
            decoded[entry] = decode_split(loaded, split, beam_size=beam_size, batch_size=config.eval_batch_size)
    return {"results": results, "decoded": decoded}


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger("gpt2_jax").setLevel(logging.INFO)
    run_dir = Path(_RUN_DIR.value)
    try:
        lock = files.DirectoryLock(run_dir, "sweep run directory").acquire()
    except UserError as e:  # another worker runs this run: leave its status alone
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    with lock:
        start = time.time()
        write_status(run_dir, {"state": "running", "started": start, "pid": os.getpid()})
        try:
            outcome = run(run_dir)
        except Exception as e:  # a failed run is recorded; the sweep goes on
            error = {
                "state": "failed",
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-4000:],
            }
            write_status(run_dir, error)
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(1)
        if outcome.get("preempted"):
            write_status(run_dir, {"state": "stopped", "step": outcome["step"]})
            return
        write_status(run_dir, {"state": "done", "seconds": time.time() - start, **outcome})


if __name__ == "__main__":
    app.run(main)
