"""Scaled dot-product attention: ``jax.nn.dot_product_attention``, and its CPU formulation.

On GPUs and TPUs :func:`attend` calls ``jax.nn.dot_product_attention`` (XLA's
implementation, or cuDNN's flash attention with ``impl="cudnn"``).  XLA's CPU
backend has no fused attention kernel: there the reference implementation runs
as separate matmuls and elementwise passes over the ``[B, N, L, S]`` scores,
and its automatic derivative adds more passes (the softmax's division and
select, a scatter of the mask).  On the CPU :func:`attend` therefore computes
the same function with :func:`softmax_attention`, whose backward pass is
written by hand (FlashAttention's formulas over the saved, unnormalised
probabilities), and computes long causal self-attention block by block so that
the masked upper triangle is never multiplied.  Both agree with
``jax.nn.dot_product_attention`` in values and gradients (tests).

Tensor names carry their shapes: B batch, L query length, S key length, N
heads, H head width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax import masks

Array = jnp.ndarray

# Causal self-attention over at least two blocks of this many queries is
# computed block by block on the CPU (see ``_block_causal_attention``).
CAUSAL_BLOCK = 128


def attend(
    q_BxLxNxH: Array, k_BxSxNxH: Array, v_BxSxNxH: Array, mask: Array | None, is_causal: bool, impl: str
) -> Array:
    """Attention of ``q`` over ``k``/``v``; ``mask`` ``[B|1, 1|N, L, S]`` is True where a query may attend.

    The softmax is computed in float32 whatever the compute dtype.  ``impl`` is
    ``"xla"`` or ``"cudnn"`` (cuDNN flash attention, GPU only); with ``"xla"``
    on the CPU backend the formulation of this module is used instead (same
    values, cheaper backward pass).
    """
    if impl != "xla" or jax.default_backend() != "cpu":
        return jax.nn.dot_product_attention(
            q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask=mask, is_causal=is_causal, implementation=impl
        )
    L, S = q_BxLxNxH.shape[1], k_BxSxNxH.shape[1]
    if is_causal:
        if mask is None and L == S and L >= 2 * CAUSAL_BLOCK and L % CAUSAL_BLOCK == 0:
            return _block_causal_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH)
        causal = masks.causal_mask(L, S)
        mask = causal if mask is None else mask & causal
    if mask is None:
        mask = jnp.ones((1, 1, L, S), bool)
    return softmax_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask)


def _block_causal_attention(q_BxLxNxH: Array, k_BxLxNxH: Array, v_BxLxNxH: Array) -> Array:
    """Causal attention one block of ``CAUSAL_BLOCK`` queries at a time, each over the keys up to its end.

    The same function as a masked full ``L x L`` product, without computing the
    upper triangle that the mask throws away: at L = 1024 and blocks of 128
    that is 44% fewer attention FLOPs, forward and backward.
    """
    L = q_BxLxNxH.shape[1]
    outs = []
    for start in range(0, L, CAUSAL_BLOCK):
        end = start + CAUSAL_BLOCK
        mask = masks.causal_mask(CAUSAL_BLOCK, end, offset=start)
        outs.append(softmax_attention(q_BxLxNxH[:, start:end], k_BxLxNxH[:, :end], v_BxLxNxH[:, :end], mask))
    return jnp.concatenate(outs, axis=1)


def _large_negative(dtype) -> float:
    # As jax.nn.dot_product_attention: masked scores get a large finite negative
    # value, so a query with no visible key averages all values instead of NaN.
    return -0.7 * float(jnp.finfo(dtype).max)


@jax.custom_vjp
def softmax_attention(q_BxLxNxH: Array, k_BxSxNxH: Array, v_BxSxNxH: Array, mask: Array) -> Array:
    """``softmax(q k^T / sqrt(H) where mask) v`` with float32 scores; ``mask`` broadcasts to ``[B, N, L, S]``."""
    return _forward(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask)[0]


def _forward(q_BxLxNxH: Array, k_BxSxNxH: Array, v_BxSxNxH: Array, mask: Array):
    dtype = q_BxLxNxH.dtype
    scale = q_BxLxNxH.shape[-1] ** -0.5
    s_BxNxLxS = jnp.einsum(
        "blnh,bsnh->bnls", q_BxLxNxH * jnp.asarray(scale, dtype), k_BxSxNxH, preferred_element_type=jnp.float32
    )
    s_BxNxLxS = jnp.where(mask, s_BxNxLxS, _large_negative(jnp.float32))
    m_BxNxL = jnp.max(s_BxNxLxS, axis=-1)
    # Unnormalised probabilities; the 1/sum is applied to the [L, H] output
    # rather than to the [L, S] probabilities (S/H times fewer divisions).
    p_BxNxLxS = jnp.exp(s_BxNxLxS - m_BxNxL[..., None])
    r_BxNxL = 1.0 / jnp.sum(p_BxNxLxS, axis=-1)
    pv_BxLxNxH = jnp.einsum("bnls,bsnh->blnh", p_BxNxLxS.astype(dtype), v_BxSxNxH, preferred_element_type=jnp.float32)
    out_BxLxNxH = (pv_BxLxNxH * jnp.swapaxes(r_BxNxL, 1, 2)[..., None]).astype(dtype)
    return out_BxLxNxH, (q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask, p_BxNxLxS, r_BxNxL, out_BxLxNxH)


def _backward(res, dout_BxLxNxH: Array):
    q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask, p_BxNxLxS, r_BxNxL, out_BxLxNxH = res
    dtype = q_BxLxNxH.dtype
    scale = q_BxLxNxH.shape[-1] ** -0.5
    r_BxLxN = jnp.swapaxes(r_BxNxL, 1, 2)
    # With P = p / sum(p): dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)).
    dv_BxSxNxH = jnp.einsum(
        "bnls,blnh->bsnh",
        p_BxNxLxS.astype(dtype),
        (dout_BxLxNxH * r_BxLxN[..., None]).astype(dtype),
        preferred_element_type=jnp.float32,
    )
    dp_BxNxLxS = jnp.einsum("blnh,bsnh->bnls", dout_BxLxNxH, v_BxSxNxH, preferred_element_type=jnp.float32)
    delta_BxNxL = jnp.swapaxes(
        jnp.sum(dout_BxLxNxH.astype(jnp.float32) * out_BxLxNxH.astype(jnp.float32), axis=-1), 1, 2
    )
    ds_BxNxLxS = p_BxNxLxS * ((dp_BxNxLxS - delta_BxNxL[..., None]) * (r_BxNxL * scale)[..., None])
    # Masked scores are constants: no gradient (p is not 0 there in a row with no visible key).
    ds_BxNxLxS = jnp.where(mask, ds_BxNxLxS, 0.0).astype(dtype)
    dq_BxLxNxH = jnp.einsum("bnls,bsnh->blnh", ds_BxNxLxS, k_BxSxNxH, preferred_element_type=jnp.float32)
    dk_BxSxNxH = jnp.einsum("bnls,blnh->bsnh", ds_BxNxLxS, q_BxLxNxH, preferred_element_type=jnp.float32)
    dmask = np.zeros(mask.shape, jax.dtypes.float0)
    return dq_BxLxNxH.astype(dtype), dk_BxSxNxH.astype(dtype), dv_BxSxNxH.astype(dtype), dmask


softmax_attention.defvjp(_forward, _backward)
