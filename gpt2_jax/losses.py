"""Losses (the tied output layer's cross-entropy, squared error) and the metrics every step reports.

Metrics are kept as *sums* (loss sum, weight sum, correct-token sum) so that
they add up exactly across micro-batches, devices and evaluation batches; the
reported loss is ``loss_sum / weight_sum``, i.e. normalised by the number of
weighted tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt2_jax.sharding import constrain

Array = jnp.ndarray
Metrics = dict[str, Array]


def tied_logits(x_BxLxD: Array, embedding_VxD: Array) -> Array:
    """Float32 logits ``[B, L, V]`` of the output layer, which shares the token table (GPT-2).

    Over one token axis, as ``model._on_tokens``: the table's gradient is then one plain matmul.
    """
    B, L, D = x_BxLxD.shape
    logits_TxV = jnp.einsum("td,vd->tv", x_BxLxD.reshape(B * L, D), embedding_VxD, preferred_element_type=jnp.float32)
    return logits_TxV.reshape(B, L, -1)


# What a padded vocabulary entry's logit becomes: exp() of it minus any real
# logit is 0, and unlike -inf it gives no NaN where a caller multiplies it by 0.
PADDED_LOGIT = -0.7 * float(np.finfo(np.float32).max)


def mask_padded_vocab(logits_BxLxV: Array, vocab_size: int) -> Array:
    """``logits`` with the entries past the real ``vocab_size`` (a padded token table's rows) set to PADDED_LOGIT."""
    if logits_BxLxV.shape[-1] == vocab_size:
        return logits_BxLxV
    real = jax.lax.broadcasted_iota(jnp.int32, logits_BxLxV.shape, logits_BxLxV.ndim - 1) < vocab_size
    return jnp.where(real, logits_BxLxV, PADDED_LOGIT)


def in_chunks(a_BxL: Array, chunk_len: int) -> Array:
    """``[B, L, ...]`` -> ``[n, B, chunk_len, ...]``, the last chunk padded (padding carries no loss weight)."""
    B, L = a_BxL.shape[:2]
    n = -(-L // chunk_len)
    pad = [(0, 0), (0, n * chunk_len - L)] + [(0, 0)] * (a_BxL.ndim - 2)
    return jnp.swapaxes(jnp.pad(a_BxL, pad).reshape(B, n, chunk_len, *a_BxL.shape[2:]), 0, 1)


def from_chunks(a_nxBxC: Array, L: int) -> Array:
    """Inverse of :func:`in_chunks`: ``[n, B, C, ...]`` -> ``[B, L, ...]``."""
    a_BxnxC = jnp.swapaxes(a_nxBxC, 0, 1)
    return a_BxnxC.reshape(a_BxnxC.shape[0], -1, *a_BxnxC.shape[3:])[:, :L]


def chunk_len_for(chunk_len: int, L: int) -> int:
    """Positions per chunk: ``chunk_len``, at most ``L``; 0 = all ``L`` at once."""
    return min(chunk_len, L) if chunk_len > 0 else L


def tied_cross_entropy(
    x_BxLxD: Array,
    embedding_VxD: Array,
    targets_BxL: Array,
    weights_BxL: Array,
    chunk_len: int = 0,
    vocab_size: int | None = None,
) -> tuple[Array, Array]:
    """``(loss_sum, argmax_BxL)``: the tied output layer's weighted cross-entropy sum and its predicted tokens.

    The ``[B, L, V]`` logits are the largest activation of a language model
    (GPT-2 124M at batch 8 x 1024: 1.6 GB in float32), so they are formed
    ``chunk_len`` positions at a time (0 = all at once) and each chunk is
    rematerialised in the backward pass instead of kept.  Rows of the table
    past ``vocab_size`` (padding) are never predicted.
    """
    _B, L, _ = x_BxLxD.shape
    vocab_size = embedding_VxD.shape[0] if vocab_size is None else vocab_size
    C = chunk_len_for(chunk_len, L)

    @jax.checkpoint
    def chunk(x_BxCxD: Array, targets_BxC: Array) -> tuple[Array, Array]:
        logits_BxCxV = mask_padded_vocab(tied_logits(x_BxCxD, embedding_VxD), vocab_size)
        logits_BxCxV = constrain(logits_BxCxV, "batch", None, "vocab")
        loss_BxC = optax.softmax_cross_entropy_with_integer_labels(logits_BxCxV, targets_BxC)
        return loss_BxC, jnp.argmax(logits_BxCxV, axis=-1).astype(jnp.int32)

    _, (loss_nxBxC, argmax_nxBxC) = jax.lax.scan(
        lambda carry, xs: (carry, chunk(*xs)),
        None,
        (in_chunks(x_BxLxD, C), in_chunks(targets_BxL.astype(jnp.int32), C)),
    )
    loss_sum = jnp.sum(from_chunks(loss_nxBxC, L) * weights_BxL.astype(jnp.float32))
    return loss_sum, from_chunks(argmax_nxBxC, L)


def squared_error(predictions_BxL: Array, targets_BxL: Array, weights_BxL: Array) -> Array:
    """Weighted sum of squared errors (regression outputs)."""
    return jnp.sum(jnp.square(predictions_BxL - targets_BxL) * weights_BxL.astype(jnp.float32))


def metric_sums(loss_sum: Array, predictions_BxL: Array, batch) -> Metrics:
    """``loss_sum``, ``weight_sum`` (weighted tokens) and ``correct_sum`` (weighted argmax hits) of one batch.

    ``predictions_BxL`` are predicted tokens for ``target_tokens`` and values
    for ``target_values`` (which have no notion of a correct token).
    """
    weights_BxL = batch["loss_weights"].astype(jnp.float32)
    if "target_values" in batch:
        correct_sum = jnp.zeros((), jnp.float32)
    else:
        correct_sum = jnp.sum((predictions_BxL == batch["target_tokens"]).astype(jnp.float32) * weights_BxL)
    return {"loss_sum": loss_sum, "weight_sum": jnp.sum(weights_BxL), "correct_sum": correct_sum}


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
