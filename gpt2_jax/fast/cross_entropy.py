"""The tied output layer and its cross-entropy with the gradients formed in the forward pass (``loss_impl="fused"``).

Same inputs and outputs as :func:`gpt2_jax.losses.tied_cross_entropy`.  The
plain form rematerialises each chunk's logits in the backward pass (the output
layer's matmul runs three times per chunk: forward, recomputation, and the two
gradient matmuls); here each chunk's gradient goes straight into the two matmuls
that give the gradients of ``x`` and of the embedding while the logits are at
hand (as Liger Kernel's fused linear cross-entropy), and the backward pass only
scales them by the incoming cotangent.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax import losses
from gpt2_jax.sharding import constrain, embedding_lookup, shards

Array = jnp.ndarray


def _chunk_stats(x_BxCxD: Array, embedding_VxD: Array, vocab_size: int) -> tuple[Array, Array, Array, Array]:
    """``(max, argmax, exp(logits - max), sum of it)`` of one chunk's logits ``[B, C, V]``."""
    logits_BxCxV = losses.mask_padded_vocab(losses.tied_logits(x_BxCxD, embedding_VxD), vocab_size)
    max_BxC = jnp.max(logits_BxCxV, axis=-1)
    e_BxCxV = jnp.exp(logits_BxCxV - max_BxC[..., None])
    return max_BxC, jnp.argmax(logits_BxCxV, axis=-1).astype(jnp.int32), e_BxCxV, jnp.sum(e_BxCxV, axis=-1)


def _loss_and_grads(x_BxLxD, embedding_VxD, targets_BxL, weights_BxL, chunk_len, vocab_size, with_grads):
    """``(token_loss_BxL, argmax_BxL, dx_BxLxD, dembedding_VxD)`` of ``sum(w * (lse - target logit))``."""
    B, L, D = x_BxLxD.shape
    V = embedding_VxD.shape[0]
    C = losses.chunk_len_for(chunk_len, L)
    # The embedding gradient sums over rows, which a mesh splits over its batch axes: one slot per row
    # shard lets each device add its own rows, summed once after the loop instead of all-reduced per chunk.
    R = shards("batch")  # row shards
    R = R if B % R == 0 else 1

    def chunk(demb_RxVxD: Array | None, xs: tuple[Array, Array]):
        x_BxCxD, w_BxC = xs
        max_BxC, argmax_BxC, e_BxCxV, sum_BxC = _chunk_stats(x_BxCxD, embedding_VxD, vocab_size)
        lse_BxC = max_BxC + jnp.log(sum_BxC)
        if demb_RxVxD is None:
            return None, (lse_BxC, argmax_BxC)
        # d(sum w * lse)/d logits = w * e / sum: the per-row factor w / sum scales x (and the
        # x-gradient) instead of e, so e enters both matmuls as written.
        e_BxCxV = e_BxCxV.astype(x_BxCxD.dtype)
        scale_BxCx1 = (w_BxC / sum_BxC)[..., None]
        dx_BxCxD = scale_BxCx1 * jnp.einsum("bcv,vd->bcd", e_BxCxV, embedding_VxD, preferred_element_type=jnp.float32)
        scaled_x_BxCxD = (x_BxCxD * scale_BxCx1).astype(x_BxCxD.dtype)
        demb_RxVxD = demb_RxVxD + jnp.einsum(
            "rtv,rtd->rvd",
            e_BxCxV.reshape(R, -1, V),
            scaled_x_BxCxD.reshape(R, -1, D),
            preferred_element_type=jnp.float32,
        )
        return constrain(demb_RxVxD, "batch", "vocab", None), (lse_BxC, argmax_BxC, dx_BxCxD)

    xs = (losses.in_chunks(x_BxLxD, C), losses.in_chunks(weights_BxL, C))
    demb_RxVxD = constrain(jnp.zeros((R, V, D), jnp.float32), "batch", "vocab", None) if with_grads else None
    demb_RxVxD, outs = jax.lax.scan(chunk, demb_RxVxD, xs)
    lse_BxL, argmax_BxL = losses.from_chunks(outs[0], L), losses.from_chunks(outs[1], L)
    # The target's logit and its part of the gradient (-w times the one-hot), from the target rows.
    rows_BxLxD = embedding_lookup(embedding_VxD, targets_BxL, "vocab")
    target_logit_BxL = jnp.einsum("bld,bld->bl", x_BxLxD, rows_BxLxD, preferred_element_type=jnp.float32)
    token_loss_BxL = lse_BxL - target_logit_BxL
    if not with_grads:
        return token_loss_BxL, argmax_BxL, None, None
    w_BxLx1 = weights_BxL[..., None]
    dx_BxLxD = losses.from_chunks(outs[2], L) - w_BxLx1 * rows_BxLxD.astype(jnp.float32)
    demb_VxD = jnp.sum(demb_RxVxD, axis=0).at[targets_BxL].add(-w_BxLx1 * x_BxLxD.astype(jnp.float32))
    return token_loss_BxL, argmax_BxL, dx_BxLxD, demb_VxD


def fused_tied_cross_entropy(
    x_BxLxD: Array, embedding_VxD: Array, targets_BxL: Array, weights_BxL: Array, chunk_len: int, vocab_size: int
) -> tuple[Array, Array]:
    """``(loss_sum, argmax_BxL)``, as :func:`gpt2_jax.losses.tied_cross_entropy`."""
    targets_BxL, weights_BxL = targets_BxL.astype(jnp.int32), weights_BxL.astype(jnp.float32)
    static = (chunk_len, vocab_size, x_BxLxD.dtype, embedding_VxD.dtype)  # the dtypes shape the cotangents
    return _fused(x_BxLxD, embedding_VxD, targets_BxL, weights_BxL, *static)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _fused(x_BxLxD, embedding_VxD, targets_BxL, weights_BxL, chunk_len, vocab_size, x_dtype, emb_dtype):
    del x_dtype, emb_dtype
    token_loss_BxL, argmax_BxL, _, _ = _loss_and_grads(
        x_BxLxD, embedding_VxD, targets_BxL, weights_BxL, chunk_len, vocab_size, with_grads=False
    )
    return jnp.sum(token_loss_BxL * weights_BxL), argmax_BxL


def _fused_fwd(x_BxLxD, embedding_VxD, targets_BxL, weights_BxL, chunk_len, vocab_size, x_dtype, emb_dtype):
    del x_dtype, emb_dtype
    token_loss_BxL, argmax_BxL, dx_BxLxD, demb_VxD = _loss_and_grads(
        x_BxLxD, embedding_VxD, targets_BxL, weights_BxL, chunk_len, vocab_size, with_grads=True
    )
    return (jnp.sum(token_loss_BxL * weights_BxL), argmax_BxL), (dx_BxLxD, demb_VxD, token_loss_BxL)


def _fused_bwd(chunk_len, vocab_size, x_dtype, emb_dtype, residuals, g):
    del chunk_len, vocab_size
    dx_BxLxD, demb_VxD, token_loss_BxL = residuals
    g_loss = g[0]  # the argmax has no gradient
    return (
        (g_loss * dx_BxLxD).astype(x_dtype),
        (g_loss * demb_VxD).astype(emb_dtype),
        np.zeros(token_loss_BxL.shape, jax.dtypes.float0),
        g_loss * token_loss_BxL,
    )


_fused.defvjp(_fused_fwd, _fused_bwd)
