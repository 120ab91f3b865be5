"""The jitted steps every architecture shares: one ``train_step``, one ``eval_step``."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from gpt2_jax import losses
from gpt2_jax.model import Transformer


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes (checkpointed as one pytree)."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2]: base dropout key, folded with the step
    nonfinite_steps: jax.Array  # int32 scalar: updates dropped for a non-finite loss/gradient


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
    clip_norm: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a global batch, for any architecture.

    With ``accum_steps > 1`` the batch is split into micro-batches whose
    gradient *sums* are accumulated in a ``lax.scan`` carry; dividing by the
    total loss weight at the end gives exactly the gradient of the full-batch
    mean loss.  Updates whose loss or gradient is not finite are dropped (the
    state keeps its parameters) and counted.  ``clip_norm`` (the optimizer's
    global-norm clipping threshold, 0 = none) only sets the ``clipped`` metric:
    1 on a step whose gradient norm reaches it, as ``optax.clip_by_global_norm``
    rescales from that norm on.
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
    clipped = (grad_norm >= clip_norm) if clip_norm > 0 else jnp.zeros((), bool)
    metrics = dict(
        sums,
        grad_norm=grad_norm,
        clipped=clipped.astype(jnp.float32),
        nonfinite=(~finite).astype(jnp.float32),
        steps=jnp.ones(()),
    )
    return state, metrics


def eval_step(params, batch: dict[str, jax.Array], *, model: Transformer) -> dict[str, jax.Array]:
    """Metric sums of one evaluation batch (no dropout), with exact match for token outputs."""
    loss_sum, predictions = model.apply({"params": params}, batch, method=Transformer.loss)
    sums = losses.metric_sums(loss_sum, predictions, batch)
    if "target_values" not in batch:
        correct = (predictions == batch["target_tokens"]).astype(jnp.float32)
        sums.update(losses.exact_match(correct, batch["loss_weights"], batch.get("segment_ids")))
    return sums


def answer_log_likelihoods(params, batch: dict[str, jax.Array], *, model: Transformer) -> jax.Array:
    """Each row's log-likelihood of its weighted target tokens ``[B]`` (to rank candidate answers)."""
    logits_BxLxV = model.apply({"params": params}, batch)
    nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["target_tokens"])
    return -(nll_BxL * batch["loss_weights"]).sum(axis=-1)
