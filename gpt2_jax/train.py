"""Training and evaluation of one run in its workdir: restore, train, evaluate, checkpoint, report.

``train_and_evaluate(config, workdir)`` is the whole run: it validates the
config, builds the :class:`~gpt2_jax.experiment.Experiment`, restores the
newest checkpoint in ``workdir`` if there is one, trains with periodic
evaluation over the whole validation split and checkpoints, and writes
``config.json``, ``metrics.jsonl``, TensorBoard events and ``results.json``
into ``workdir``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from gpt2_jax import batch as batch_lib
from gpt2_jax import checkpointing, files, losses, optim, sharding, validation
from gpt2_jax import workdir as workdir_lib
from gpt2_jax.experiment import Experiment
from gpt2_jax.metrics_writer import MetricsWriter

log = logging.getLogger(__name__)


class _Preemption:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and stops at the next step boundary."""

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Preemption:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.requested = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def params_fingerprint(params: Any) -> str:
    """SHA-256 of every parameter's bytes, in tree order: equal iff the parameters are bit-identical."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


class _Timer:
    """Steady-state training time: starts after the first (compiling) step, paused for eval and checkpoints."""

    def __init__(self):
        self.seconds = 0.0
        self.tokens = 0
        self._since: float | None = None
        self._tokens_from = 0

    def start(self, tokens_seen: int) -> None:
        self._since, self._tokens_from = time.time(), tokens_seen

    def running(self, tokens_seen: int) -> tuple[float, int]:
        """(seconds, tokens) timed so far, the current stretch included."""
        if self._since is None:
            return self.seconds, self.tokens
        return self.seconds + time.time() - self._since, self.tokens + tokens_seen - self._tokens_from

    def stop(self, tokens_seen: int) -> None:
        self.seconds, self.tokens = self.running(tokens_seen)
        self._since = None

    @contextlib.contextmanager
    def paused(self, tokens_seen: int):
        running = self._since is not None
        if running:
            self.stop(tokens_seen)
        yield
        if running:
            self.start(tokens_seen)


class Trainer:
    """One run in its workdir: lock it, check it, restore, train, evaluate, checkpoint, report.

    Every check (the config against ``config.json``, the checkpoint's
    signature, the data and tokenizer against the run's fingerprints) runs
    before anything in the workdir is written.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: Path,
        overwrite: bool = False,
        accept_data_change: bool = False,
    ):
        self.wall_start = time.time()
        self.config = config
        self.workdir = workdir
        self.exp = Experiment(config)
        log.info(
            "process %d of %d: mesh %s over %d devices (%d here)",
            jax.process_index(),
            jax.process_count(),
            dict(self.exp.mesh.shape),
            self.exp.mesh.size,
            len(jax.local_devices()),
        )
        self.lock = workdir_lib.lock(workdir)
        try:
            self._restore(overwrite, accept_data_change)
        except BaseException:
            if hasattr(self, "ckpt"):
                self.ckpt.close()
            self.lock.release()
            raise

    def _restore(self, overwrite: bool, accept_data_change: bool) -> None:
        config, workdir = self.config, self.workdir
        workdir_lib.check_workdir(workdir, config.to_dict(), overwrite)
        self.ckpt = checkpointing.Checkpointer(
            workdir / "checkpoints", config.max_checkpoints_to_keep, set_aside_unreadable=True
        )
        fingerprints = workdir_lib.data_fingerprints(self.exp.data)
        if self.ckpt.steps():  # before the signature: a changed alphabet also changes the vocabulary's size
            workdir_lib.check_data(workdir, fingerprints, accept_data_change)
        abstract = checkpointing.abstract_with_shardings(self.exp.abstract_state, self.exp.state_shardings)
        restored = self.ckpt.restore(abstract, self.exp.signature)
        workdir_lib.write_run_files(workdir, config, self.exp.model_config, self.exp.data.tokenizer, fingerprints)
        self.counters = {
            "tokens_seen": 0,
            "loss_tokens_seen": 0,
            "wall_time_s": 0.0,
            "train_time_s": 0.0,
            "timed_tokens": 0,
            "best_eval_loss": float("inf"),
            "last_eval": None,
        }
        data_state = None
        if restored is None:
            self.state, self.start = self.exp.init_state(), 0
        else:
            self.state, meta, self.start = restored
            self.counters.update(meta["counters"])
            data_state = meta["data"]
            log.info("resumed from step %d in %s", self.start, self.ckpt.directory)
        self.iterator = self.exp.data.train_iterator(data_state)
        self.timer = _Timer()
        self.writer = MetricsWriter(workdir, resume_step=self.start if restored is not None else None)

    # -- pieces ---------------------------------------------------------------

    def _counters(self) -> dict:
        """The run's counters as of now: earlier invocations' plus this one's (so a re-run keeps them)."""
        seconds, tokens = self.timer.running(self.counters["tokens_seen"])
        return dict(
            self.counters,
            wall_time_s=self.counters["wall_time_s"] + (time.time() - self.wall_start),
            train_time_s=self.counters["train_time_s"] + seconds,
            timed_tokens=self.counters["timed_tokens"] + tokens,
        )

    def _meta(self) -> dict:
        return {"signature": self.exp.signature, "data": self.iterator.get_state(), "counters": self._counters()}

    def _save(self, step: int) -> None:
        self.ckpt.save(step, self.state, self._meta())

    def _evaluate(self, step: int) -> None:
        result = self.exp.evaluate(self.state.params)
        self.counters["best_eval_loss"] = min(self.counters["best_eval_loss"], result["loss"])
        self.counters["last_eval"] = result
        self.writer.write(step, "eval", result)
        log.info("step %d eval loss %.4f accuracy %.4f", step, result["loss"], result["accuracy"])

    def _nonfinite(self, where: str) -> NonFiniteLossError:
        return NonFiniteLossError(
            f"non-finite loss or gradient {where}; the last good checkpoint in {self.ckpt.directory} is kept. "
            "Lower config.optimizer.learning_rate, or set config.on_nonfinite='skip' to drop such updates"
        )

    def _log(self, done: int, window: dict, tokens: int, seconds: float) -> dict:
        values = jax.device_get(window)
        if values["nonfinite"] > 0 and self.config.on_nonfinite == "stop":
            raise self._nonfinite(f"at or before step {done}")
        summary = losses.summarize(values)
        flops_per_s = self.exp.flops_per_step * float(values["steps"]) / max(seconds, 1e-9) / self.exp.mesh.size
        summary.update(
            learning_rate=float(optim.schedule(self.config.optimizer, self.config.num_train_steps)(done - 1)),
            grad_norm=float(values["grad_norm"] / values["steps"]),
            clipped_fraction=float(values["clipped"] / values["steps"]),
            tokens_per_s=tokens / max(seconds, 1e-9),
            model_tflops_per_s_per_device=flops_per_s / 1e12,
            nonfinite_steps=int(jax.device_get(self.state.nonfinite_steps)),
        )
        if self.exp.peak_flops_per_device:
            summary["mfu"] = flops_per_s / self.exp.peak_flops_per_device
        self.writer.write(done, "train", summary)
        return summary

    # -- the loop -------------------------------------------------------------

    def train(self) -> int | None:
        """Train to ``num_train_steps``; returns the step at which a signal stopped it, else None."""
        config, exp, counters = self.config, self.exp, self.counters
        total, timer = config.num_train_steps, self.timer
        window, window_tokens, window_start = None, 0, time.time()
        pending = None  # (step, nonfinite flag) of the previous step, read one step late to keep the device busy
        progress = tqdm.tqdm(total=total, initial=self.start, disable=None, dynamic_ncols=True, desc="train")
        with _Preemption() as preemption, contextlib.closing(progress):
            for step in range(self.start, total):
                host_batch = next(self.iterator)
                seen, with_loss = batch_lib.count_tokens(host_batch)
                self.state, metrics = exp.train_step(self.state, exp.place(host_batch))
                if pending is not None and config.on_nonfinite == "stop" and float(pending[1]) > 0:
                    raise self._nonfinite(f"at step {pending[0]}")
                pending = (step, metrics["nonfinite"])
                counters["tokens_seen"] += seen
                counters["loss_tokens_seen"] += with_loss
                window = metrics if window is None else jax.tree.map(jnp.add, window, metrics)
                window_tokens += seen
                if step == self.start:
                    jax.block_until_ready(self.state.step)
                    timer.start(counters["tokens_seen"])
                done = step + 1
                last = done == total
                if last:  # the timed stretch ends here, so the last checkpoint holds all of it
                    jax.block_until_ready(self.state.step)
                    timer.stop(counters["tokens_seen"])
                if done % config.log_every_steps == 0 or last:
                    summary = self._log(done, window, window_tokens, time.time() - window_start)
                    postfix = {"loss": f"{summary['loss']:.4f}", "tok_s": f"{summary['tokens_per_s']:.0f}"}
                    if "mfu" in summary:
                        postfix["mfu"] = f"{summary['mfu']:.1%}"
                    progress.set_postfix(postfix)
                    window, window_tokens, window_start = None, 0, time.time()
                progress.update(1)
                evaluate = last or (config.eval_every_steps and done % config.eval_every_steps == 0)
                save = last or (config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0)
                if (evaluate or save or preemption.requested is not None) and config.on_nonfinite == "stop":
                    if float(pending[1]) > 0:  # never checkpoint or report a state past a bad step
                        raise self._nonfinite(f"at step {pending[0]}")
                with timer.paused(counters["tokens_seen"]):
                    if evaluate:
                        self._evaluate(done)
                    if save or (preemption.requested is not None and not last):
                        self._save(done)
                if preemption.requested is not None and not last:
                    return done
            jax.block_until_ready(self.state.step)
            timer.stop(counters["tokens_seen"])
        return None

    def results(self) -> dict:
        """Final evaluation of every split, written to ``results.json``."""
        exp, total = self.exp, self.config.num_train_steps
        if self.counters["last_eval"] is None:  # resumed a run that had already finished
            self._evaluate(total)
        counters = self._counters()
        final = counters["last_eval"]
        splits = {"validation": final}
        for split in exp.data.eval_splits:
            if split != "validation":
                splits[split] = exp.evaluate(self.state.params, split)
                self.writer.write(total, f"eval_{split}", splits[split])
        if hasattr(exp.data, "ranking_questions"):
            for split in ("validation", "reverse"):
                splits[split] = dict(splits[split], ranking=exp.rank_answers(self.state.params, split))
        num_params, num_emb = exp.num_params()
        results = {
            "arch": exp.model_config.arch,
            "steps": total,
            "final_eval_loss": final["loss"],
            "final_eval_accuracy": final["accuracy"],
            **({"final_eval_exact_match": final["exact_match"]} if "exact_match" in final else {}),
            "best_eval_loss": counters["best_eval_loss"],
            "eval_loss_tokens": final["loss_tokens"],
            "eval": splits,
            "num_params": num_params,
            "num_embedding_params": num_emb,
            "num_non_embedding_params": num_params - num_emb,
            "tokens_seen": counters["tokens_seen"],
            "loss_tokens_seen": counters["loss_tokens_seen"],
            "wall_time_s": counters["wall_time_s"],
            "train_tokens_per_s": counters["timed_tokens"] / max(counters["train_time_s"], 1e-9),
            "nonfinite_steps": int(jax.device_get(self.state.nonfinite_steps)),
            "params_sha256": params_fingerprint(self.state.params),
            "finished": True,
        }
        if jax.process_index() == 0:
            files.write_json(self.workdir / "results.json", results)
        return results

    def close(self) -> None:
        self.ckpt.close()
        self.writer.close()
        self.lock.release()


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, overwrite: bool = False, accept_data_change: bool = False
) -> dict:
    """Train and evaluate one run in ``workdir``; resume if it holds a checkpoint.

    ``accept_data_change`` resumes a run whose data changed since it was trained
    (its tokenizer must not have); otherwise such a resume is refused.

    Returns the contents of ``results.json``, or ``{"preempted": True, "step": N}``
    (and no results file) when SIGTERM/SIGINT stopped the run after saving a
    checkpoint at step N.
    """
    validation.validate(config)
    if config.distributed:
        sharding.initialize_distributed(config.coordinator_address, config.num_processes, config.process_id)
    trainer = Trainer(config, Path(workdir), overwrite, accept_data_change)
    try:
        stopped = trainer.train()
        if stopped is not None:
            trainer.ckpt.wait()
            log.warning(
                "stopped by a signal after step %d; checkpoint saved in %s. Re-run the same command to continue",
                stopped,
                trainer.ckpt.directory,
            )
            return {"preempted": True, "step": stopped}
        return trainer.results()
    finally:
        trainer.close()
