"""Scaled dot-product attention: ``jax.nn.dot_product_attention``, or an opt-in form of it.

Tensor names carry their shapes: B batch, L query length, S key length, N
heads, H head width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gpt2_jax.fast import attention as fast_attention

Array = jnp.ndarray

IMPLEMENTATIONS = ("xla", "cudnn", "block_causal")


def attend(q_BxLxNxH: Array, k_BxSxNxH: Array, v_BxSxNxH: Array, mask: Array | None, impl: str) -> Array:
    """Attention of ``q`` over ``k``/``v``: ``[B, L, N, H]``.

    ``mask`` ``[B|1, 1|N, L, S]`` is True where a query may attend; None is the
    causal mask (no mask tensor, so fused kernels skip masked blocks).  The
    softmax runs in float32 whatever the compute dtype.  ``impl``: ``"xla"``;
    ``"cudnn"`` (cuDNN flash attention, GPUs); ``"block_causal"`` (XLA, causal
    self-attention per block of queries, see :mod:`gpt2_jax.fast.attention`).
    """
    if impl == "block_causal":
        if mask is None and q_BxLxNxH.shape[1] == k_BxSxNxH.shape[1] and fast_attention.applies(q_BxLxNxH.shape[1]):
            return fast_attention.block_causal_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH)
        impl = "xla"
    return jax.nn.dot_product_attention(
        q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask=mask, is_causal=mask is None, implementation=impl
    )
