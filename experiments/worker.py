"""One sweep run in its own process: ``python -m experiments.worker --run_dir=DIR``.

Reads ``DIR/run.json`` (the run's config and what to decode afterwards),
trains and evaluates with :func:`gpt2_jax.train.train_and_evaluate` (resuming
from ``DIR``'s checkpoints if any), decodes the requested splits, and writes
``DIR/status.json``: ``{"state": "done", ...}`` or ``{"state": "failed", "error": ...}``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path

import ml_collections
from absl import app, flags

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory holding run.json.", required=True)


def write_status(run_dir: Path, status: dict) -> None:
    """Atomically replace ``status.json`` (a crash never leaves half a file)."""
    tmp = run_dir / "status.json.tmp"
    tmp.write_text(json.dumps(status, indent=2))
    tmp.replace(run_dir / "status.json")


def run(run_dir: Path) -> dict:
    from gpt2_jax import experiment, runs, train
    from gpt2_jax.evaluate import decode_split

    spec = json.loads((run_dir / "run.json").read_text())
    config = ml_collections.ConfigDict(spec["config"])
    experiment.enable_compilation_cache(config)
    results = train.train_and_evaluate(config, run_dir / "train")
    if results.get("preempted"):
        raise RuntimeError(f"stopped by a signal after step {results['step']}")
    decoded = {}
    if spec.get("decode"):
        loaded = runs.load(run_dir / "train")
        for split in spec["decode"]:
            decoded[split] = decode_split(loaded, split, batch_size=config.eval_batch_size)
    return {"results": results, "decoded": decoded}


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger("gpt2_jax").setLevel(logging.INFO)
    run_dir = Path(_RUN_DIR.value)
    start = time.time()
    write_status(run_dir, {"state": "running", "started": start})
    try:
        outcome = run(run_dir)
    except Exception as e:  # a failed run is recorded; the sweep goes on
        write_status(
            run_dir,
            {"state": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]},
        )
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    write_status(run_dir, {"state": "done", "seconds": time.time() - start, **outcome})


if __name__ == "__main__":
    app.run(main)
