"""Boolean attention masks: the one place where architectures differ.

Every mask here is boolean with ``True`` = "this query may attend to this key",
and has shape ``[batch, 1, q_len, kv_len]`` (the head axis is broadcast), the
layout ``jax.nn.dot_product_attention`` accepts.  Masks are combined with a
logical AND (:func:`combine`).

Conventions shared with the batch schema (:mod:`gpt2_jax.batch`):

* ``segment_ids`` label the example each position belongs to; ``0`` marks
  padding.  Packed rows hold several examples (ids 1, 2, ...) that must never
  see each other.
* ``bidirectional`` (T5X's ``decoder_causal_attention``) marks the prefix of a
  prefix-LM row: positions whose *input* token belongs to the prefix.  Prefix
  positions see each other both ways; every other position is causal.

Worked example, one row of length 5 whose first 3 positions are the prefix::

    >>> bidirectional = jnp.array([[1, 1, 1, 0, 0]], bool)
    >>> prefix_mask(bidirectional)[0, 0].astype(int)
    [[1 1 1 0 0]
     [1 1 1 0 0]
     [1 1 1 0 0]
     [1 1 1 1 0]
     [1 1 1 1 1]]

and two packed examples (3 + 2 tokens) under a causal mask::

    >>> segment_ids = jnp.array([[1, 1, 1, 2, 2]])
    >>> combine(causal_mask(5), segment_mask(segment_ids))[0, 0].astype(int)
    [[1 0 0 0 0]
     [1 1 0 0 0]
     [1 1 1 0 0]
     [0 0 0 1 0]
     [0 0 0 1 1]]
"""

from __future__ import annotations

import jax.numpy as jnp

Array = jnp.ndarray


def causal_mask(q_len: int, kv_len: int | None = None, offset: int = 0) -> Array:
    """Lower-triangular mask ``[1, 1, q_len, kv_len]``.

    Query ``i`` sits at absolute position ``offset + i`` and may attend to keys
    ``0 .. offset + i``; ``offset`` is used when queries are the last
    ``q_len`` positions of a longer key sequence (incremental decoding).
    """
    kv_len = q_len if kv_len is None else kv_len
    q_pos = jnp.arange(q_len)[:, None] + offset
    kv_pos = jnp.arange(kv_len)[None, :]
    return (kv_pos <= q_pos)[None, None]


def padding_mask(q_valid: Array, kv_valid: Array) -> Array:
    """``[B, 1, Lq, Lk]``: True where both the query and the key are real tokens.

    Args:
      q_valid: ``[B, Lq]`` bool/int, nonzero for real query positions.
      kv_valid: ``[B, Lk]`` bool/int, nonzero for real key positions.
    """
    return jnp.logical_and(q_valid[:, None, :, None] != 0, kv_valid[:, None, None, :] != 0)


def segment_mask(q_segment_ids: Array, kv_segment_ids: Array | None = None) -> Array:
    """``[B, 1, Lq, Lk]``: True where query and key belong to the same example.

    Segment id 0 is padding and matches nothing (not even other padding), so
    this mask also acts as the padding mask of a packed or padded row.
    """
    kv_segment_ids = q_segment_ids if kv_segment_ids is None else kv_segment_ids
    same = q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]
    return jnp.logical_and(same, padding_mask(q_segment_ids, kv_segment_ids))


def prefix_mask(bidirectional: Array) -> Array:
    """Prefix-LM mask ``[B, 1, L, L]``: causal, plus full attention inside the prefix.

    ``bidirectional`` is ``[B, L]``, nonzero on prefix positions (T5X's
    ``decoder_causal_attention``).  A query may attend to a key when the key is
    not after it, or when both are in the prefix.  With an all-zero
    ``bidirectional`` this is exactly :func:`causal_mask`; with all ones it is
    a fully bidirectional (encoder) mask.
    """
    length = bidirectional.shape[-1]
    both_in_prefix = padding_mask(bidirectional, bidirectional)
    return jnp.logical_or(causal_mask(length), both_in_prefix)


def cross_mask(decoder_segment_ids: Array, encoder_segment_ids: Array) -> Array:
    """``[B, 1, Ldec, Lenc]``: decoder queries over encoder keys of the same example.

    Used for encoder-decoder cross-attention; padding on either side (segment
    id 0) is masked out, and packed examples only see their own source.
    """
    return segment_mask(decoder_segment_ids, encoder_segment_ids)


def combine(*masks: Array | None) -> Array | None:
    """Logical AND of the given masks (``None`` entries are skipped)."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


def self_attention_mask(
    kind: str,
    length: int,
    segment_ids: Array | None = None,
    bidirectional: Array | None = None,
) -> Array | None:
    """The self-attention mask of one architecture's stack.

    Args:
      kind: ``"causal"`` (GPT-2 decoder), ``"prefix"`` (prefix-LM decoder) or
        ``"bidirectional"`` (encoder).
      length: sequence length ``L``.
      segment_ids: ``[B, L]`` or None (None = one unpadded example per row).
      bidirectional: ``[B, L]`` prefix marker, required for ``"prefix"``.

    Returns:
      ``[B or 1, 1, L, L]`` bool, or None when every query may attend to every
      key (an unpadded bidirectional row), which lets attention skip masking.
    """
    if kind == "causal":
        base = causal_mask(length)
    elif kind == "prefix":
        if bidirectional is None:
            raise ValueError("a prefix mask needs the batch's 'bidirectional' field (the prefix marker)")
        base = prefix_mask(bidirectional)
    elif kind == "bidirectional":
        base = None
    else:
        raise ValueError(f"unknown mask kind {kind!r}; expected 'causal', 'prefix' or 'bidirectional'")
    seg = None if segment_ids is None else segment_mask(segment_ids)
    return combine(base, seg)
