"""Relative position schemes: rotary embeddings (RoPE) and T5's bucketed relative-position biases.

Both depend only on the distance between a query's and a key's position, so
shifting every position by a constant changes nothing (tested).  Positions are
the batch's ``positions``, which restart in every packed example.

Tensor names carry their shapes: B batch, L query length, S key length, N
heads, H head width.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

Array = jnp.ndarray

ROPE_BASE = 10_000.0
T5_BUCKETS = 32
T5_MAX_DISTANCE = 128


def rope(x_BxLxNxH: Array, positions_BxL: Array) -> Array:
    """Rotate each pair ``(x[i], x[i + H/2])`` by ``position / base^(2i / H)`` (rotary dim = head dim)."""
    H = x_BxLxNxH.shape[-1]
    inverse_frequency_F = ROPE_BASE ** (-jnp.arange(0, H, 2, dtype=jnp.float32) / H)
    angle_BxLx1xF = (positions_BxL.astype(jnp.float32)[..., None] * inverse_frequency_F)[:, :, None, :]
    cos, sin = jnp.cos(angle_BxLx1xF), jnp.sin(angle_BxLx1xF)
    x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BxLxNxH.dtype)


def t5_bucket(relative_position: Array, bidirectional: bool) -> Array:
    """T5's bucket of ``key_position - query_position``: exact for small distances, logarithmic up to 128.

    Bidirectional (encoders, a prefix-LM's stack): half the buckets for keys
    before the query, half for keys after.  One-sided (causal stacks): every
    bucket for keys at or before the query.
    """
    buckets = T5_BUCKETS
    offset = jnp.zeros_like(relative_position)
    if bidirectional:
        buckets //= 2
        offset = jnp.where(relative_position > 0, buckets, 0)
        distance = jnp.abs(relative_position)
    else:
        distance = jnp.maximum(-relative_position, 0)
    exact = buckets // 2
    log_bucket = exact + (
        jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact)
        / math.log(T5_MAX_DISTANCE / exact)
        * (buckets - exact)
    ).astype(jnp.int32)
    return offset + jnp.where(distance < exact, distance, jnp.minimum(log_bucket, buckets - 1))


def t5_bias(table_KxN: Array, query_positions_BxL: Array, key_positions_BxS: Array, bidirectional: bool) -> Array:
    """Attention logit biases ``[B, N, L, S]`` from a learned ``[buckets, heads]`` table."""
    relative_BxLxS = key_positions_BxS[:, None, :] - query_positions_BxL[:, :, None]
    bias_BxLxSxN = jnp.take(table_KxN, t5_bucket(relative_BxLxS, bidirectional), axis=0)
    return jnp.transpose(bias_BxLxSxN, (0, 3, 1, 2))
