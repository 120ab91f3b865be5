"""Training and evaluation of every architecture: one ``train_step``, one ``eval_step``.

``train_and_evaluate(config, workdir)`` is the whole run: it validates the
config, builds data, model, mesh and optimizer, restores the newest checkpoint
in ``workdir`` if there is one, trains with periodic evaluation over the whole
validation split and checkpoints, and writes ``config.json``,
``metrics.jsonl``, TensorBoard events and ``results.json`` into ``workdir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from gpt2_jax import batch as batch_lib
from gpt2_jax import checkpointing, flops, losses, optim, sharding, validation
from gpt2_jax import data as data_lib
from gpt2_jax.data import tokenizers
from gpt2_jax.errors import CheckpointError, ConfigError
from gpt2_jax.metrics_writer import MetricsWriter
from gpt2_jax.model import Transformer, TransformerConfig

log = logging.getLogger(__name__)

# Fields that may change between a run and its resumption: how long it runs,
# how often it reports, and where and how it computes (the same function on
# another mesh or machine, with recomputation, fused attention, another loss
# chunk length, gradient accumulation or compiler options: tested equal), not
# what it computes.
RESUMABLE_CHANGES = (
    "num_train_steps",
    "eval_every_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "max_checkpoints_to_keep",
    "data.data_dir",
    "data.cache_dir",
    "mesh.data",
    "mesh.fsdp",
    "mesh.tensor",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
    "model.remat",
    "model.remat_policy",
    "model.loss_chunk_len",
    "model.logits_dtype",
    "model.attention_impl",
    "optimizer.grad_accum_steps",
    "xla_options",
)


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes (checkpointed as one pytree)."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2]: base dropout key, folded with the step
    nonfinite_steps: jax.Array  # int32 scalar: updates dropped for a non-finite loss/gradient


# --------------------------------------------------------------------------- steps


def _loss_and_metrics(params, batch, model: Transformer, deterministic: bool, dropout_key):
    loss_sum, predictions = model.apply(
        {"params": params}, batch, deterministic=deterministic, rngs={"dropout": dropout_key}, method=Transformer.loss
    )
    return loss_sum, losses.metric_sums(loss_sum, predictions, batch)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: Transformer,
    tx: optax.GradientTransformation,
    accum_steps: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a global batch, for any architecture.

    With ``accum_steps > 1`` the batch is split into micro-batches whose
    gradient *sums* are accumulated in a ``lax.scan`` carry; dividing by the
    total loss weight at the end gives exactly the gradient of the full-batch
    mean loss.  Updates whose loss or gradient is not finite are dropped (the
    state keeps its parameters) and counted.
    """
    dropout_key = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(_loss_and_metrics, has_aux=True)

    if accum_steps == 1:
        (_, sums), grads = grad_fn(state.params, batch, model, False, dropout_key)
    else:
        # Micro-batch k takes rows k, K + k, 2K + k, ...: each device keeps its
        # own rows, so no data moves between devices.
        def split(x):
            return jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1)

        micro = jax.tree.map(split, batch)

        def body(carry, xs):
            grad_acc, sums_acc = carry
            index, micro_batch = xs
            (_, sums), grads = grad_fn(state.params, micro_batch, model, False, jax.random.fold_in(dropout_key, index))
            return (jax.tree.map(jnp.add, grad_acc, grads), jax.tree.map(jnp.add, sums_acc, sums)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        zero_sums = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "weight_sum", "correct_sum")}
        (grads, sums), _ = jax.lax.scan(body, (zeros, zero_sums), (jnp.arange(accum_steps), micro))

    denom = jnp.maximum(sums["weight_sum"], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(sums["loss_sum"]) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
    )
    metrics = dict(sums, grad_norm=grad_norm, nonfinite=(~finite).astype(jnp.float32), steps=jnp.ones(()))
    return state, metrics


def eval_step(params, batch: dict[str, jax.Array], *, model: Transformer) -> dict[str, jax.Array]:
    """Metric sums of one evaluation batch (no dropout), with exact match for token outputs."""
    loss_sum, predictions = model.apply({"params": params}, batch, method=Transformer.loss)
    sums = losses.metric_sums(loss_sum, predictions, batch)
    if "target_values" not in batch:
        correct = (predictions == batch["target_tokens"]).astype(jnp.float32)
        sums.update(losses.exact_match(correct, batch["loss_weights"], batch.get("segment_ids")))
    return sums


# --------------------------------------------------------------------------- setup


def model_config(
    config: ml_collections.ConfigDict, vocab_size: int, data_max_len: int, vector_dim: int = 0
) -> TransformerConfig:
    """Resolve the automatic model fields (vocabulary, position table, vector inputs) against the data."""
    m = config.model
    if m.vocab_size and m.vocab_size != vocab_size:
        raise ConfigError(
            f"config.model.vocab_size={m.vocab_size} but the {config.data.tokenizer!r} tokenizer has "
            f"{vocab_size} tokens; set config.model.vocab_size=0 to take it from the tokenizer"
        )
    if m.max_len and m.max_len < data_max_len:
        raise ConfigError(
            f"config.model.max_len={m.max_len} is shorter than the data's sequences ({data_max_len} positions); "
            "raise it or set it to 0"
        )
    if m.vector_dim and m.vector_dim != vector_dim:
        raise ConfigError(f"config.model.vector_dim={m.vector_dim} but the data has {vector_dim}; set it to 0")
    values = m.to_dict()
    values.update(vocab_size=vocab_size, max_len=m.max_len or data_max_len, vector_dim=vector_dim)
    return TransformerConfig.from_config(values)


class Experiment:
    """The built pieces of a run: data, model, optimizer, mesh, shardings and compiled steps."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
        validation.validate(config)
        validation.validate_on_backend(config)
        self.config = config
        self.data = data_lib.build(config)
        self.model_config = model_config(
            config, self.data.tokenizer.vocab_size, self.data.max_len, self.data.vector_dim
        )
        self.model = Transformer(self.model_config)
        self.mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
        batch_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        micro = config.batch_size // config.optimizer.grad_accum_steps
        if micro % batch_shards:
            raise ConfigError(
                f"config.batch_size={config.batch_size} / grad_accum_steps={config.optimizer.grad_accum_steps} "
                f"= {micro} rows per micro-batch, not divisible by the {batch_shards} data x fsdp shards "
                f"of mesh {dict(self.mesh.shape)}; change the batch size or config.mesh"
            )
        if config.eval_batch_size % batch_shards:
            raise ConfigError(
                f"config.eval_batch_size={config.eval_batch_size} is not divisible by the {batch_shards} "
                f"data x fsdp shards of mesh {dict(self.mesh.shape)}"
            )
        tensor, rows = self.mesh.shape["tensor"], self.model_config.table_rows
        if rows % tensor:
            log.warning(
                "the %d-token table does not split over tensor=%d: the output layer all-reduces its logits instead "
                "of splitting the vocabulary; set config.model.pad_vocab_to=%d (or a multiple of it)",
                rows,
                tensor,
                tensor,
            )
        if self.model_config.remat and jax.default_backend() == "cpu":
            log.warning(
                "config.model.remat=True on the CPU only costs time: XLA:CPU's buffer assignment keeps the "
                "same peak memory with the recomputation (jax-ml/jax#19822); GPU and TPU backends save memory with it"
            )
        example = next(self.data.train_iterator())
        self._init_batch = {k: v[:1] for k, v in example.items()}
        # Model FLOPs of one train step (6N + 12 L d T per position of the batch's shape, padding included,
        # as MFU counts them) and one device's datasheet peak (None on CPUs and unknown devices).
        encoder = example.get("encoder_input_tokens")
        B, L = example["input_tokens"].shape
        self.flops_per_step = B * flops.train_flops(self.model_config, L, 0 if encoder is None else encoder.shape[1])
        self.peak_flops_per_device = flops.datasheet_peak(self.mesh.devices.flat[0], config.model.dtype)
        abstract_params = jax.eval_shape(self._init_params, jax.random.PRNGKey(0))
        self.tx = optim.make(config.optimizer, config.num_train_steps, abstract_params)
        self.abstract_state = jax.eval_shape(self._init_state, jax.random.PRNGKey(config.seed))
        self.state_shardings = sharding.tree_shardings(self.abstract_state, self.mesh)
        self.param_shardings = self.state_shardings.params
        self.signature = checkpointing.signature(
            self.model_config.arch, self.abstract_state.params, self.model_config.vocab_size
        )
        batch_sh = sharding.batch_sharding(self.mesh)
        repl = sharding.replicated(self.mesh)
        xla_options = validation.xla_options(config.xla_options)  # names checked by validate_on_backend
        self.train_step = jax.jit(
            sharding.traced_on(
                self.mesh,
                functools.partial(
                    train_step, model=self.model, tx=self.tx, accum_steps=config.optimizer.grad_accum_steps
                ),
            ),
            in_shardings=(self.state_shardings, batch_sh),
            out_shardings=(self.state_shardings, repl),
            donate_argnums=0,
            compiler_options=xla_options,
        )
        self.eval_step = jax.jit(
            sharding.traced_on(self.mesh, functools.partial(eval_step, model=self.model)),
            in_shardings=(self.param_shardings, batch_sh),
            out_shardings=repl,
            compiler_options=xla_options,
        )
        self._init = jax.jit(self._init_state, out_shardings=self.state_shardings)

    def _init_params(self, key: jax.Array) -> Any:
        return self.model.init({"params": key}, self._init_batch)["params"]

    def _init_state(self, rng: jax.Array) -> TrainState:
        param_key, dropout_key = jax.random.split(rng)
        params = self._init_params(param_key)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            rng=dropout_key,
            nonfinite_steps=jnp.zeros((), jnp.int32),
        )

    def init_state(self) -> TrainState:
        """Fresh parameters (or ``model.init_from``'s pretrained ones) and optimizer state, placed on the mesh."""
        state = self._init(jax.random.PRNGKey(self.config.seed))
        if not self.config.model.init_from:
            return state
        from gpt2_jax import hf_gpt2

        _, pretrained = hf_gpt2.load(self.config.model.init_from, self.model_config.pad_vocab_to)
        expected = checkpointing.signature(self.model_config.arch, pretrained, self.model_config.vocab_size)
        diffs = checkpointing.signature_diff(expected, self.signature)
        if diffs:
            raise CheckpointError(
                f"config.model.init_from={self.config.model.init_from!r} does not fit this model: "
                + "; ".join(diffs[:3])
            )
        params = jax.device_put(pretrained, self.param_shardings)
        return state.replace(params=params, opt_state=jax.jit(self.tx.init)(params))

    def place(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Put this process's rows of a global batch on the mesh."""
        rows = sharding.process_slice(len(host_batch["input_tokens"]))
        return sharding.global_batch({k: v[rows] for k, v in host_batch.items()}, self.mesh)

    def evaluate(self, params, split: str = "validation") -> dict[str, float]:
        """Loss, accuracy (and exact match) over a whole evaluation split."""
        total = None
        for host_batch in self.data.eval_splits[split]():
            sums = self.eval_step(params, self.place(host_batch))
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        return losses.summarize(jax.device_get(total))

    def num_params(self) -> tuple[int, int]:
        """(all parameters, embedding parameters)."""
        flat = flax.traverse_util.flatten_dict(self.abstract_state.params)
        total = sum(int(np.prod(v.shape)) for v in flat.values())
        emb = sum(int(np.prod(v.shape)) for k, v in flat.items() if k[-1] == "embedding")
        return total, emb


# --------------------------------------------------------------------------- workdir


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Model fields whose 0 means "derive from the data"; a resolved value in config.json is not a difference.
AUTO_FIELDS = ("model.vocab_size", "model.max_len", "model.mlp_dim", "model.num_encoder_layers", "model.vector_dim")


def config_differences(saved: dict, config_dict: dict, ignore: Collection[str] = ()) -> list[str]:
    """``"field: saved -> new"`` for each field of ``config_dict`` (dotted names) that differs from ``saved``.

    A field that ``saved`` lacks was added to the code after ``saved`` was
    written, and counts as unchanged where ``config_dict`` holds its default: a
    new field's default keeps the behaviour from before it existed (see
    ``configs/default.py``), so runs and sweeps saved by older code resume.
    """
    from configs import default  # the one config schema

    defaults = _flatten(json.loads(json.dumps(default.get_config().to_dict())))
    old, new = _flatten(saved), _flatten(json.loads(json.dumps(config_dict)))
    return [
        f"{k}: {old.get(k)!r} -> {new[k]!r}"
        for k in sorted(new)
        if k not in ignore and old.get(k) != new[k] and not (k not in old and k in defaults and new[k] == defaults[k])
    ]


def check_workdir(workdir: Path, config_dict: dict, overwrite: bool) -> None:
    """Refuse a workdir that holds a run of another config (unless ``overwrite``, which clears it).

    ``config_dict`` is the config as given (automatic fields still 0); what the
    data resolves them to is checked against the checkpoint instead.
    """
    path = workdir / "config.json"
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        saved = {}
    given = _flatten(config_dict)
    automatic = [k for k in AUTO_FIELDS if given.get(k) == 0]
    diffs = config_differences(saved, config_dict, (*RESUMABLE_CHANGES, *automatic))
    if not diffs:
        return
    if not overwrite:
        raise CheckpointError(
            f"{workdir} holds a run of a different config ({'; '.join(diffs[:5])}); "
            "use another --workdir, or pass --overwrite to delete that run and start over"
        )
    log.warning("overwriting the run in %s (%s)", workdir, "; ".join(diffs[:5]))
    for name in ("checkpoints", "tensorboard"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    for name in ("metrics.jsonl", "results.json", "config.json", "tokenizer.json"):
        (workdir / name).unlink(missing_ok=True)


def _resolved_config(config: ml_collections.ConfigDict, mc: TransformerConfig) -> dict:
    out = config.to_dict()
    out["model"].update(dataclasses.asdict(mc))
    return out


# --------------------------------------------------------------------------- loop


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
    """Steady-state training time: starts after the first (compiling) step, pauses for eval and checkpoints."""

    def __init__(self):
        self.seconds = 0.0
        self.tokens = 0
        self._since: float | None = None

    def start(self) -> None:
        self._since = time.time()

    @contextlib.contextmanager
    def paused(self):
        t0 = time.time()
        yield
        if self._since is not None:
            self._since += time.time() - t0

    def stop(self, tokens: int) -> None:
        if self._since is not None:
            self.seconds += time.time() - self._since
            self.tokens += tokens
            self._since = None


class Trainer:
    """One run in one workdir: restore, train, evaluate, checkpoint, report."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, overwrite: bool = False):
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
        resolved = _resolved_config(config, self.exp.model_config)
        check_workdir(workdir, config.to_dict(), overwrite)
        workdir.mkdir(parents=True, exist_ok=True)  # only once everything above has been checked
        if jax.process_index() == 0:
            (workdir / "config.json").write_text(json.dumps(resolved, indent=2))
            tokenizers.save(self.exp.data.tokenizer, workdir / "tokenizer.json")
        self.ckpt = checkpointing.Checkpointer(workdir / "checkpoints", config.max_checkpoints_to_keep)
        abstract = checkpointing.abstract_with_shardings(self.exp.abstract_state, self.exp.state_shardings)
        restored = self.ckpt.restore(abstract, self.exp.signature)
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
        self.writer = MetricsWriter(workdir, resume_step=self.start if restored is not None else None)

    # -- pieces ---------------------------------------------------------------

    def _meta(self) -> dict:
        elapsed = self.counters["wall_time_s"] + (time.time() - self.wall_start)
        return {
            "signature": self.exp.signature,
            "data": self.iterator.get_state(),
            "counters": dict(self.counters, wall_time_s=elapsed),
        }

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
        total = config.num_train_steps
        timer = _Timer()
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
                    timer.start()
                    timed_from = counters["tokens_seen"]
                done = step + 1
                last = done == total
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
                with timer.paused():
                    if evaluate:
                        self._evaluate(done)
                    if save:
                        self._save(done)
                    if preemption.requested is not None and not last:
                        self._save(done)
                        timer.stop(counters["tokens_seen"] - timed_from)
                        return done
            jax.block_until_ready(self.state.step)
            if self.start < total:
                timer.stop(counters["tokens_seen"] - timed_from)
        counters["train_time_s"] += timer.seconds
        counters["timed_tokens"] += timer.tokens
        return None

    def results(self) -> dict:
        """Final evaluation of every split, written to ``results.json``."""
        exp, counters, total = self.exp, self.counters, self.config.num_train_steps
        if counters["last_eval"] is None:  # resumed a run that had already finished
            self._evaluate(total)
        final = counters["last_eval"]
        splits = {"validation": final}
        for split in exp.data.eval_splits:
            if split != "validation":
                splits[split] = exp.evaluate(self.state.params, split)
                self.writer.write(total, f"eval_{split}", splits[split])
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
            "wall_time_s": counters["wall_time_s"] + (time.time() - self.wall_start),
            "train_tokens_per_s": counters["timed_tokens"] / max(counters["train_time_s"], 1e-9),
            "nonfinite_steps": int(jax.device_get(self.state.nonfinite_steps)),
            "params_sha256": params_fingerprint(self.state.params),
            "finished": True,
        }
        if jax.process_index() == 0:
            (self.workdir / "results.json").write_text(json.dumps(results, indent=2))
        return results

    def close(self) -> None:
        self.ckpt.close()
        self.writer.close()


def enable_compilation_cache(config: ml_collections.ConfigDict) -> None:
    """Keep XLA's compiled programs (in ``$GPT2_JAX_XLA_CACHE_DIR``, else the cache directory's ``xla/``).

    Sweeps and resumed runs compile the same programs again and again.
    """
    from gpt2_jax.data import paths

    directory = os.environ.get("GPT2_JAX_XLA_CACHE_DIR") or str(paths.cache_dir(config.data.cache_dir) / "xla")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, overwrite: bool = False) -> dict:
    """Train and evaluate one run in ``workdir``; resume if it holds a checkpoint.

    Returns the contents of ``results.json``, or ``{"preempted": True, "step": N}``
    (and no results file) when SIGTERM/SIGINT stopped the run after saving a
    checkpoint at step N.
    """
    validation.validate(config)
    if config.distributed:
        sharding.initialize_distributed(config.coordinator_address, config.num_processes, config.process_id)
    trainer = Trainer(config, Path(workdir), overwrite)
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
