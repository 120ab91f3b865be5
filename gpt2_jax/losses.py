"""Weighted token cross-entropy and the metrics every step reports.

Metrics are kept as *sums* (loss sum, weight sum, correct-token sum) so that
they add up exactly across micro-batches, devices and evaluation batches; the
reported loss is ``loss_sum / weight_sum``, i.e. normalised by the number of
weighted tokens.
"""

from __future__ import annotations

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


def summarize(sums: Metrics) -> dict[str, float]:
    """Turn metric sums into ``loss`` (mean nats per loss token), ``accuracy`` and ``loss_tokens``."""
    weight = float(sums["weight_sum"])
    denom = max(weight, 1.0)
    return {
        "loss": float(sums["loss_sum"]) / denom,
        "accuracy": float(sums["correct_sum"]) / denom,
        "loss_tokens": weight,
    }
