"""Weighted token cross-entropy and the metrics every step reports.

Metrics are kept as *sums* (loss sum, weight sum, correct-token sum) so that
they add up exactly across micro-batches, devices and evaluation batches; the
reported loss is ``loss_sum / weight_sum``, i.e. normalised by the number of
weighted tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray
Metrics = dict[str, Array]


def _max_and_first_index(a: tuple[Array, Array], b: tuple[Array, Array]) -> tuple[Array, Array]:
    (value_a, index_a), (value_b, index_b) = a, b
    take_a = (value_a > value_b) | ((value_a == value_b) & (index_a < index_b))
    return jnp.where(take_a, value_a, value_b), jnp.where(take_a, index_a, index_b)


def _token_cross_entropy_fwd(logits_BxLxV: Array, targets_BxL: Array) -> tuple[tuple[Array, Array], tuple]:
    # One variadic reduce gives the max (for a stable logsumexp) and the argmax
    # (the first index among equal maxima, as jnp.argmax).
    max_BxL, argmax_BxL = jax.lax.reduce(
        (logits_BxLxV, jax.lax.broadcasted_iota(jnp.int32, logits_BxLxV.shape, 2)),
        (jnp.float32(-jnp.inf), jnp.int32(logits_BxLxV.shape[-1])),
        _max_and_first_index,
        (2,),
    )
    lse_BxL = max_BxL + jnp.log(jnp.sum(jnp.exp(logits_BxLxV - max_BxL[..., None]), axis=-1))
    target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    return (lse_BxL - target_logit_BxL, argmax_BxL), (logits_BxLxV, targets_BxL, lse_BxL)


def _token_cross_entropy_bwd(res: tuple, g: tuple[Array, Array]) -> tuple[Array, Array]:
    logits_BxLxV, targets_BxL, lse_BxL = res
    g_BxL = g[0]
    one_hot_BxLxV = jax.lax.broadcasted_iota(jnp.int32, logits_BxLxV.shape, 2) == targets_BxL[..., None]
    softmax_BxLxV = jnp.exp(logits_BxLxV - lse_BxL[..., None])
    d_logits_BxLxV = (softmax_BxLxV - one_hot_BxLxV.astype(jnp.float32)) * g_BxL[..., None]
    return d_logits_BxLxV, np.zeros(targets_BxL.shape, jax.dtypes.float0)


@jax.custom_vjp
def token_cross_entropy(logits_BxLxV: Array, targets_BxL: Array) -> tuple[Array, Array]:
    """``(loss_BxL, argmax_BxL)``: per-token cross-entropy of float32 logits, and the predicted tokens.

    Written with its derivative, ``(softmax(logits) - one_hot(target)) * g``,
    so that the backward pass is one elementwise pass over the ``[B, L, V]``
    logits -- the largest activation of a language model -- which XLA fuses
    with the rounding to the compute dtype that the output layer's matmuls
    take.  Automatic differentiation of ``log_softmax`` and a gather adds a
    scatter and separate passes (on an H200 at GPT-2 124M, batch 32: ~4 ms of
    a 69 ms step).
    """
    return _token_cross_entropy_fwd(logits_BxLxV, targets_BxL)[0]


token_cross_entropy.defvjp(_token_cross_entropy_fwd, _token_cross_entropy_bwd)


def weighted_cross_entropy(logits_BxLxV: Array, targets_BxL: Array, weights_BxL: Array) -> tuple[Array, Metrics]:
    """Sum of per-token cross-entropy (nats) weighted by ``weights_BxL``, and metric sums.

    Returns:
      ``(loss_sum, metrics)`` where ``metrics`` holds ``loss_sum``,
      ``weight_sum`` (number of weighted tokens) and ``correct_sum`` (weighted
      count of argmax hits).
    """
    weights_BxL = weights_BxL.astype(jnp.float32)
    targets_BxL = targets_BxL.astype(jnp.int32)
    token_loss_BxL, argmax_BxL = token_cross_entropy(logits_BxLxV.astype(jnp.float32), targets_BxL)
    loss_sum = jnp.sum(token_loss_BxL * weights_BxL)
    correct_BxL = (argmax_BxL == targets_BxL).astype(jnp.float32)
    metrics = {
        "loss_sum": loss_sum,
        "weight_sum": jnp.sum(weights_BxL),
        "correct_sum": jnp.sum(correct_BxL * weights_BxL),
    }
    return loss_sum, metrics


def squared_error(predictions_BxL: Array, targets_BxL: Array, weights_BxL: Array) -> tuple[Array, Metrics]:
    """Weighted sum of squared errors (regression outputs), with the same metric sums as cross-entropy."""
    weights_BxL = weights_BxL.astype(jnp.float32)
    loss_sum = jnp.sum(jnp.square(predictions_BxL - targets_BxL) * weights_BxL)
    return loss_sum, {"loss_sum": loss_sum, "weight_sum": jnp.sum(weights_BxL), "correct_sum": jnp.zeros(())}


def exact_match(correct_BxL: Array, weights_BxL: Array, segment_ids_BxL: Array | None) -> Metrics:
    """Examples whose every loss token is predicted correctly (greedy decoding would reproduce them exactly).

    Under teacher forcing, "argmax is right at every target position" is the
    same event as "greedy decoding outputs the target", so this is the
    exact-match accuracy of greedy decoding without running the decoder.
    Examples are the (row, segment) pairs that carry loss.
    """
    B, L = weights_BxL.shape
    seg = jnp.ones((B, L), jnp.int32) if segment_ids_BxL is None else segment_ids_BxL
    ids = (jnp.arange(B)[:, None] * (L + 1) + seg).reshape(-1)
    has_loss = (weights_BxL > 0).reshape(-1).astype(jnp.float32)
    errors = (has_loss * (1.0 - correct_BxL.reshape(-1))).astype(jnp.float32)
    n = B * (L + 1)
    per_example_errors = jax.ops.segment_sum(errors, ids, num_segments=n)
    per_example_loss = jax.ops.segment_sum(has_loss, ids, num_segments=n)
    examples = per_example_loss > 0
    return {
        "examples_sum": jnp.sum(examples.astype(jnp.float32)),
        "exact_sum": jnp.sum((examples & (per_example_errors == 0)).astype(jnp.float32)),
    }


def compute(outputs: Array, batch) -> tuple[Array, Metrics]:
    """The loss of any model output against its batch: cross-entropy on tokens, squared error on values."""
    if "target_values" in batch:
        return squared_error(outputs, batch["target_values"], batch["loss_weights"])
    return weighted_cross_entropy(outputs, batch["target_tokens"], batch["loss_weights"])


def summarize(sums: Metrics) -> dict[str, float]:
    """Turn metric sums into ``loss`` (mean nats per loss token), ``accuracy`` and ``loss_tokens``."""
    weight = float(sums["weight_sum"])
    denom = max(weight, 1.0)
    out = {
        "loss": float(sums["loss_sum"]) / denom,
        "accuracy": float(sums["correct_sum"]) / denom,
        "loss_tokens": weight,
    }
    if "examples_sum" in sums:
        out["exact_match"] = float(sums["exact_sum"]) / max(float(sums["examples_sum"]), 1.0)
        out["examples"] = float(sums["examples_sum"])
    return out
