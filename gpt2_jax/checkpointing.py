"""Orbax checkpoints of the train state plus a JSON record of everything else.

Each checkpoint step holds two items: ``state`` (parameters, optimizer state,
step, RNG; restored onto whatever mesh the current run uses) and ``meta`` (the
data iterator's position, run counters and the model's *signature*: its
architecture and parameter shapes).  The signature is compared before any
array is read, so a checkpoint of another architecture or shape is refused with
a message that says what differs.  Orbax writes each step into a temporary
directory and renames it when complete, so a crash during a save never leaves
a half-written step behind.  A step whose files still fail to read (truncated,
deleted, overwritten) is reported and the previous one is used; training moves
it aside (to ``unreadable_checkpoints/`` beside the checkpoints) so that the step
is saved again and never counts against ``max_to_keep``.  Any other error
(out of memory, a sharding that does not fit) surfaces as it is.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from gpt2_jax.errors import CheckpointError

log = logging.getLogger(__name__)


def signature(arch: str, params: Any, vocab_size: int) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that restores it."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return {
        "arch": arch,
        "vocab_size": int(vocab_size),
        "params": {k: list(np.shape(v)) for k, v in sorted(flat.items())},
    }


def signature_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two signatures (empty when compatible)."""
    diffs = []
    for key in ("arch", "vocab_size"):
        if saved.get(key) != current.get(key):
            diffs.append(f"{key} is {saved.get(key)!r} in the checkpoint but {current.get(key)!r} in this run")
    saved_p, cur_p = saved.get("params", {}), current.get("params", {})
    only_saved = sorted(set(saved_p) - set(cur_p))
    only_cur = sorted(set(cur_p) - set(saved_p))
    if only_saved:
        diffs.append(f"{len(only_saved)} parameters only in the checkpoint (e.g. {only_saved[0]})")
    if only_cur:
        diffs.append(f"{len(only_cur)} parameters missing from the checkpoint (e.g. {only_cur[0]})")
    for k in sorted(set(saved_p) & set(cur_p)):
        if list(saved_p[k]) != list(cur_p[k]):
            diff = f"{k} has shape {tuple(saved_p[k])} in the checkpoint but {tuple(cur_p[k])} in this run"
            if "/c_attn/" in k and np.prod(saved_p[k]) == np.prod(cur_p[k]):
                diff += (
                    " (GPT-2's fused layout, which gpt2_jax used before c_attn kept each part on an axis of its "
                    "own: reshape these arrays to [..., parts, D] or retrain)"
                )
            diffs.append(diff)
    return diffs


# What reading a damaged step raises (Orbax and TensorStore report missing or cut files as OSError or ValueError).
UNREADABLE = (OSError, ValueError, KeyError)


class Checkpointer:
    """Save and restore ``(state, meta)`` pairs under ``directory``.

    ``set_aside_unreadable`` (training): a step that cannot be read is moved out
    of ``directory``; readers (decoding, evaluation) leave the directory as it is.
    """

    def __init__(
        self,
        directory: str | Path,
        max_to_keep: int = 2,
        async_save: bool = True,
        set_aside_unreadable: bool = False,
    ):
        self.directory = Path(directory).absolute()
        self.set_aside_unreadable = set_aside_unreadable
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # remove what a crash during a save left behind
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Start saving ``state`` and ``meta`` as step ``step`` (asynchronously by default)."""
        if step in self._manager.all_steps():
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, force=True)

    def read_meta(self, step: int) -> dict[str, Any]:
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def restore(
        self, abstract: Any, expected_signature: dict[str, Any], params_only: bool = False
    ) -> tuple[Any, dict, int] | None:
        """Restore the newest readable step into ``abstract``'s shapes and shardings.

        ``abstract`` is the whole train state, or with ``params_only`` just its
        parameters: then only they are read from disk (decoding and evaluation
        need neither the optimizer's moments, twice the parameters' size, nor
        the optimizer config that shaped them).
        Returns ``(state or params, meta, step)``, or None when there is no
        checkpoint.  Raises :class:`CheckpointError` when the checkpoint
        belongs to another model, or when no step can be read.
        """
        if params_only:
            item = {"params": abstract}
            args = ocp.args.PyTreeRestore(
                item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
            )
        else:
            args = ocp.args.StandardRestore(abstract)
        steps = self.steps()
        failures = []
        for step in reversed(steps):
            try:
                meta = self.read_meta(step)
            except UNREADABLE as e:
                failures.append(self._unreadable(step, e))
                continue
            diffs = signature_diff(meta.get("signature", {}), expected_signature)
            if diffs:
                raise CheckpointError(
                    f"the checkpoint in {self.directory} (step {step}) belongs to a different model: "
                    + "; ".join(diffs[:4])
                    + ". Use a fresh --workdir, or the config that wrote it"
                )
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(state=args))
            except UNREADABLE as e:
                failures.append(self._unreadable(step, e))
                continue
            return (restored.state["params"] if params_only else restored.state), meta, step
        if failures and not self.set_aside_unreadable:
            raise CheckpointError(
                f"no checkpoint in {self.directory} could be read ({'; '.join(failures)[:500]}); "
                "delete the directory to start over"
            )
        if failures:
            log.warning("no readable checkpoint is left in %s: training starts again from step 0", self.directory)
        return None

    def _unreadable(self, step: int, error: Exception) -> str:
        """Report an unreadable step (and, when training, move it aside); returns the failure's description."""
        failure = f"step {step}: {type(error).__name__}: {str(error)[:300]}"
        if not self.set_aside_unreadable:
            log.warning(
                "checkpoint step %d in %s is unreadable (%s); trying an earlier one", step, self.directory, error
            )
            return failure
        aside = self.directory.parent / "unreadable_checkpoints" / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
        aside.parent.mkdir(exist_ok=True)
        shutil.move(str(self.directory / str(step)), str(aside))
        self._manager.reload()
        log.warning(
            "checkpoint step %d in %s is unreadable (%s); moved it to %s and trying an earlier one",
            step,
            self.directory,
            error,
            aside,
        )
        return failure

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` leaves carrying the target shardings (Orbax restores onto them)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
