"""Scaled dot-product attention through ``jax.nn.dot_product_attention``, block-causal on the CPU.

Tensor names carry their shapes: B batch, L query length, S key length, N
heads, H head width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gpt2_jax import masks

Array = jnp.ndarray

# Causal self-attention over at least two blocks of this many queries is
# computed block by block on the CPU (see ``_block_causal_attention``).
CAUSAL_BLOCK = 128


def attend(
    q_BxLxNxH: Array, k_BxSxNxH: Array, v_BxSxNxH: Array, mask: Array | None, is_causal: bool, impl: str
) -> Array:
    """Attention of ``q`` over ``k``/``v``; ``mask`` ``[B|1, 1|N, L, S]`` is True where a query may attend.

    The softmax is computed in float32 whatever the compute dtype (JAX's XLA
    implementation upcasts the logits).  ``impl`` is ``"xla"`` or ``"cudnn"``
    (cuDNN flash attention, GPU only).
    """
    L, S = q_BxLxNxH.shape[1], k_BxSxNxH.shape[1]
    if (
        impl == "xla"
        and is_causal
        and mask is None
        and L == S
        and L >= 2 * CAUSAL_BLOCK
        and L % CAUSAL_BLOCK == 0
        and jax.default_backend() == "cpu"
    ):
        return _block_causal_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH)
    return jax.nn.dot_product_attention(
        q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask=mask, is_causal=is_causal, implementation=impl
    )


def _block_causal_attention(q_BxLxNxH: Array, k_BxLxNxH: Array, v_BxLxNxH: Array) -> Array:
    """Causal attention one block of ``CAUSAL_BLOCK`` queries at a time, each over the keys up to its end.

    The same function as a masked full ``L x L`` product, without computing the
    upper triangle that the mask throws away: at L = 1024 and blocks of 128
    that is 44% fewer attention FLOPs, forward and backward.  XLA's CPU backend
    has no fused attention kernel, so the saving is real there (measured per
    layer, forward + backward: L = 256 105 -> 81 ms, L = 1024 454 -> 238 ms);
    on GPUs cuDNN's flash attention already skips masked tiles.
    """
    L = q_BxLxNxH.shape[1]
    outs = []
    for start in range(0, L, CAUSAL_BLOCK):
        end = start + CAUSAL_BLOCK
        outs.append(
            jax.nn.dot_product_attention(
                q_BxLxNxH[:, start:end],
                k_BxLxNxH[:, :end],
                v_BxLxNxH[:, :end],
                mask=masks.causal_mask(CAUSAL_BLOCK, end, offset=start),
                implementation="xla",
            )
        )
    return jnp.concatenate(outs, axis=1)
