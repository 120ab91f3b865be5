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


def attend(
    q_BxLxNxH: Array,
    k_BxSxNxH: Array,
    v_BxSxNxH: Array,
    mask: Array | None,
    impl: str,
    bias_BxNxLxS: Array | None = None,
) -> Array:
    """Attention of ``q`` over ``k``/``v``: ``[B, L, N, H]``.

    ``mask`` ``[B|1, 1|N, L, S]`` is True where a query may attend; None is the
    causal mask (no mask tensor, so fused kernels skip masked blocks).
    ``bias`` is added to the logits (T5's relative positions).  The softmax
    runs in float32 whatever the compute dtype.  ``impl``: ``"xla"``;
    ``"cudnn"`` (cuDNN flash attention, GPUs); ``"block_causal"`` (XLA, causal
    self-attention per block of queries without a bias, see
    :mod:`gpt2_jax.fast.attention`).
    """
    if impl == "block_causal":
        L, S = q_BxLxNxH.shape[1], k_BxSxNxH.shape[1]
        if mask is None and bias_BxNxLxS is None and L == S and fast_attention.applies(L):
            return fast_attention.block_causal_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH)
        impl = "xla"
    return jax.nn.dot_product_attention(
        q_BxLxNxH,
        k_BxSxNxH,
        v_BxSxNxH,
        bias=None if bias_BxNxLxS is None else bias_BxNxLxS.astype(q_BxLxNxH.dtype),
        mask=mask,
        is_causal=mask is None,
        implementation=impl,
    )
