"""Weighted token cross-entropy and the metrics every step reports.

Metrics are kept as *sums* (loss sum, weight sum, correct-token sum) so that
they add up exactly across micro-batches, devices and evaluation batches; the
reported loss is ``loss_sum / weight_sum``, i.e. normalised by the number of
weighted tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jnp.ndarray
Metrics = dict[str, Array]


def weighted_cross_entropy(logits_BxLxV: Array, targets_BxL: Array, weights_BxL: Array) -> tuple[Array, Metrics]:
    """Sum of per-token cross-entropy (nats) weighted by ``weights_BxL``, and metric sums.

    Returns:
      ``(loss_sum, metrics)`` where ``metrics`` holds ``loss_sum``,
      ``weight_sum`` (number of weighted tokens) and ``correct_sum`` (weighted
      count of argmax hits).
    """
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    weights_BxL = weights_BxL.astype(jnp.float32)
    token_loss_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
    loss_sum = jnp.sum(token_loss_BxL * weights_BxL)
    correct_BxL = (jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL).astype(jnp.float32)
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
