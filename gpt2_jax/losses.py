"""Losses (the tied output layer's cross-entropy, squared error) and the metrics every step reports.

Metrics are kept as *sums* (loss sum, weight sum, correct-token sum) so that
they add up exactly across micro-batches, devices and evaluation batches; the
reported loss is ``loss_sum / weight_sum``, i.e. normalised by the number of
weighted tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax.sharding import constrain, shards, take_rows

Array = jnp.ndarray
Metrics = dict[str, Array]


def _max_and_first_index(a: tuple[Array, Array], b: tuple[Array, Array]) -> tuple[Array, Array]:
    (value_a, index_a), (value_b, index_b) = a, b
    take_a = (value_a > value_b) | ((value_a == value_b) & (index_a < index_b))
    return jnp.where(take_a, value_a, value_b), jnp.where(take_a, index_a, index_b)


def variadic_max_and_argmax(logits_TxV: Array) -> tuple[Array, Array]:
    """:func:`row_max_and_argmax` as one variadic (value, index) reduction: one pass over the logits."""
    axis = logits_TxV.ndim - 1
    return jax.lax.reduce(
        (logits_TxV, jax.lax.broadcasted_iota(jnp.int32, logits_TxV.shape, axis)),
        (jnp.float32(-jnp.inf), jnp.int32(logits_TxV.shape[-1])),
        _max_and_first_index,
        (axis,),
    )


# Spreads logit gaps in :func:`scaled_gap_max_and_argmax`: any two float32
# logits that differ by more than 2^-56 (all distinct ones whose magnitude is
# above ~1e-10) differ by more than a 2^24-entry vocabulary after scaling, and
# logits below 2^48 in magnitude stay finite.
_GAP_SCALE = 2.0**80


def scaled_gap_max_and_argmax(logits_TxV: Array) -> tuple[Array, Array]:
    """:func:`row_max_and_argmax` as two plain max-reductions (XLA:CPU vectorises them).

    ``key = (logit - max) * 2^80 - index`` is ``-index`` exactly at a row's
    maxima and below ``-V`` everywhere else, so ``-max(key)`` is the first
    maximum's index.  ``logit * 2^80 - max * 2^80`` is that scaled gap exactly
    (a power of two scales without rounding) and, written so, is not the
    ``logit - max`` of the caller's ``exp``: XLA would otherwise write that
    difference out once for both.
    """
    V = logits_TxV.shape[-1]
    scale = jnp.float32(_GAP_SCALE)
    max_T = jnp.max(logits_TxV, axis=-1)
    gaps_TxV = logits_TxV * scale - (max_T * scale)[..., None]
    key_T = jnp.max(gaps_TxV - jnp.arange(V, dtype=jnp.float32), axis=-1)
    return max_T, (-key_T).astype(jnp.int32)


def row_max_and_argmax(logits_TxV: Array) -> tuple[Array, Array]:
    """The max of every row and the first index that reaches it (as ``jnp.argmax``): ``[..., V] -> [...], [...]``.

    On GPUs and TPUs one variadic (value, index) reduction reads the logits
    once.  XLA:CPU runs that reduction through its own scalar loop emitter,
    while it hands a float max over an elementwise expression to YNNPACK's
    vectorised reductions: on the CPU two of those are faster despite the
    second read (one core, ``[2048, 8192]`` float32 with a logsumexp's
    exp-sum: 85 -> 46 ms; the bench's fused output layer + loss with its
    gradients: 287 -> 250 and 299 -> 269 ms on two cores).
    """
    if jax.default_backend() == "cpu":
        return scaled_gap_max_and_argmax(logits_TxV)
    return variadic_max_and_argmax(logits_TxV)


# What a padded vocabulary entry's logit becomes: exp() of it minus any real
# logit is 0, and unlike -inf it gives no NaN where a caller multiplies it by 0.
PADDED_LOGIT = -0.7 * float(np.finfo(np.float32).max)


def mask_padded_vocab(logits_BxLxV: Array, vocab_size: int) -> Array:
    """``logits`` with the entries past the real ``vocab_size`` (a padded token table's rows) set to PADDED_LOGIT."""
    if logits_BxLxV.shape[-1] == vocab_size:
        return logits_BxLxV
    real = jax.lax.broadcasted_iota(jnp.int32, logits_BxLxV.shape, logits_BxLxV.ndim - 1) < vocab_size
    return jnp.where(real, logits_BxLxV, PADDED_LOGIT)


def _in_chunks(a_BxL: Array, chunk_len: int) -> Array:
    """``[B, L, ...]`` -> ``[n, B, chunk_len, ...]``, the last chunk padded (padding carries no loss weight)."""
    B, L = a_BxL.shape[:2]
    n = -(-L // chunk_len)
    pad = [(0, 0), (0, n * chunk_len - L)] + [(0, 0)] * (a_BxL.ndim - 2)
    return jnp.swapaxes(jnp.pad(a_BxL, pad).reshape(B, n, chunk_len, *a_BxL.shape[2:]), 0, 1)


def _from_chunks(a_nxBxC: Array, L: int) -> Array:
    """Inverse of :func:`_in_chunks`: ``[n, B, C, ...]`` -> ``[B, L, ...]``."""
    a_BxnxC = jnp.swapaxes(a_nxBxC, 0, 1)
    return a_BxnxC.reshape(a_BxnxC.shape[0], -1, *a_BxnxC.shape[3:])[:, :L]


def transposed_embedding_grad(x_TxD: Array, g_TxV: Array) -> Array:
    """``x^T g`` summed over the token axis: ``[..., T, D], [..., T, V] -> [..., D, V]`` in float32.

    The gradient of a tied output layer's token table, transposed (``[D, V]``;
    callers transpose the sum once, behind a barrier of their own).  It is
    computed as ``[D, T] @ [T, V]`` with ``x``'s transpose written out -- the
    barrier keeps XLA from folding it back into the matmul.  XLA:CPU's YNNPACK
    matmuls contract the first operand's last axis; a product that contracts
    the first axis of both operands (``"tv,td->vd"``) falls back to a slower
    matmul (one core: 40 against 76 GFLOP/s for ``[2048, 384]`` and ``[2048,
    8192]``).  The benchmark's fused output layer + loss with its gradients
    (``[8, 256, 384]``, vocabulary 8192), medians of three runs: 785 -> 713,
    814 -> 717 and 825 -> 755 ms on one core; 362 -> 350, 430 -> 392 and
    370 -> 367 ms on two.  The copy is ``T x D``, small next to the
    ``T x V x D`` matmul.
    """
    xt_DxT = jax.lax.optimization_barrier(jnp.swapaxes(x_TxD, -1, -2))
    return jnp.matmul(xt_DxT, g_TxV, preferred_element_type=jnp.float32)


def _chunked(
    x_BxLxD: Array,
    embedding_VxD: Array,
    weights_BxL: Array,
    chunk_len: int,
    vocab_size: int,
    logits_dtype,
    with_grads: bool,
) -> tuple[Array, Array, Array | None, Array | None]:
    """Per-token log-sum-exp of the logits and argmax over position chunks, and the gradients of ``sum(w * lse)``.

    Returns ``(lse_BxL, argmax_BxL, dx_BxLxD, dembedding_VxD)``, the gradients
    (``with_grads``; else ``None``) in float32.
    """
    B, L, D = x_BxLxD.shape
    V = embedding_VxD.shape[0]
    C = min(chunk_len, L) if chunk_len > 0 else L
    # The embedding gradient sums over rows, which a mesh splits over its batch
    # axes.  Accumulated in one carry, it would be all-reduced after every
    # chunk; with one slot per row shard, sharded like the rows, each device adds
    # its own rows into its own slot, and the slots are summed once at the end.
    S = shards("batch")
    S = S if B % S == 0 else 1

    def add_embedding_grad(demb_SxDxV: Array, e_TxV: Array, x_TxD: Array) -> Array:
        # Without a mesh S = 1 and XLA drops the unit axis: one plain [D, T] @ [T, V] matmul.
        demb_SxDxV = demb_SxDxV + transposed_embedding_grad(x_TxD.reshape(S, -1, D), e_TxV.reshape(S, -1, V))
        return constrain(demb_SxDxV, "batch", None, "vocab")

    def chunk(demb_SxDxV: Array | None, xs: tuple[Array, Array]):
        x_BxCxD, w_BxC = xs
        # One token axis, as in model.Dense: the embedding gradient then contracts one axis.
        x_TxD = x_BxCxD.reshape(B * C, D)
        logits_TxV = jnp.einsum("td,vd->tv", x_TxD, embedding_VxD, preferred_element_type=logits_dtype)
        logits_TxV = logits_TxV.astype(jnp.float32)
        logits_BxCxV = constrain(mask_padded_vocab(logits_TxV.reshape(B, C, V), vocab_size), "batch", None, "vocab")
        max_BxC, argmax_BxC = row_max_and_argmax(logits_BxCxV)
        e_BxCxV = jnp.exp(logits_BxCxV - max_BxC[..., None])
        sum_BxC = jnp.sum(e_BxCxV, axis=-1)
        lse_BxC = max_BxC + jnp.log(sum_BxC)
        if demb_SxDxV is None:
            return None, (lse_BxC, argmax_BxC)
        # d(sum w * lse)/d logits = w * e / sum.  The per-row factor w / sum
        # scales the matmuls' other side instead of e, so e goes into both
        # matmuls (rounded to the compute dtype) as written by the pass that
        # sums it: no further pass over the logits.
        e_TxV = e_BxCxV.reshape(B * C, V).astype(x_BxCxD.dtype)
        scale_Tx1 = (w_BxC / sum_BxC).reshape(B * C, 1)
        dx_TxD = scale_Tx1 * jnp.einsum("tv,vd->td", e_TxV, embedding_VxD, preferred_element_type=jnp.float32)
        demb_SxDxV = add_embedding_grad(demb_SxDxV, e_TxV, (x_TxD * scale_Tx1).astype(x_TxD.dtype))
        return demb_SxDxV, (lse_BxC, argmax_BxC, dx_TxD.reshape(B, C, D))

    xs = (_in_chunks(x_BxLxD, C), _in_chunks(weights_BxL, C))
    demb_SxDxV = constrain(jnp.zeros((S, D, V), jnp.float32), "batch", None, "vocab") if with_grads else None
    demb_SxDxV, outs = jax.lax.scan(chunk, demb_SxDxV, xs)
    lse_BxL, argmax_BxL = _from_chunks(outs[0], L), _from_chunks(outs[1], L)
    if not with_grads:
        return lse_BxL, argmax_BxL, None, None
    # Transposed once, after the barrier: with one chunk XLA would otherwise fold
    # the transpose into that chunk's matmul and undo transposed_embedding_grad's layout.
    demb_VxD = jax.lax.optimization_barrier(jnp.sum(demb_SxDxV, axis=0)).T
    return lse_BxL, argmax_BxL, _from_chunks(outs[2], L), demb_VxD


def _target_logits(x_BxLxD: Array, embedding_VxD: Array, targets_BxL: Array, logits_dtype) -> tuple[Array, Array]:
    """The targets' logits ``[B, L]`` (float32, rounded as the logits matmul rounds them) and their embedding rows."""
    rows_BxLxD = take_rows(embedding_VxD, targets_BxL, "vocab")
    logit_BxL = jnp.einsum("bld,bld->bl", x_BxLxD, rows_BxLxD, preferred_element_type=jnp.float32)
    return logit_BxL.astype(logits_dtype).astype(jnp.float32), rows_BxLxD


def _loss_and_grads(x_BxLxD, embedding_VxD, targets_BxL, weights_BxL, chunk_len, vocab_size, logits_dtype, with_grads):
    """``(token_loss_BxL, argmax_BxL, loss_sum, dx_BxLxD, dembedding_VxD)``: loss = lse - the target's logit.

    The target's part of the gradient (``-w`` times the one-hot) is added here,
    in float32, from the target rows: a gather for ``x`` and a scatter-add for
    the embedding, both ``[B, L, D]``, instead of a pass over the logits.
    """
    lse_BxL, argmax_BxL, dx_BxLxD, demb_VxD = _chunked(
        x_BxLxD, embedding_VxD, weights_BxL, chunk_len, vocab_size, logits_dtype, with_grads
    )
    target_logit_BxL, rows_BxLxD = _target_logits(x_BxLxD, embedding_VxD, targets_BxL, logits_dtype)
    token_loss_BxL = lse_BxL - target_logit_BxL
    loss_sum = jnp.sum(token_loss_BxL * weights_BxL)
    if with_grads:
        w_BxLx1 = weights_BxL[..., None]
        dx_BxLxD = dx_BxLxD - w_BxLx1 * rows_BxLxD.astype(jnp.float32)
        demb_VxD = demb_VxD.at[targets_BxL].add(-w_BxLx1 * x_BxLxD.astype(jnp.float32))
    return token_loss_BxL, argmax_BxL, loss_sum, dx_BxLxD, demb_VxD


def tied_cross_entropy(
    x_BxLxD: Array,
    embedding_VxD: Array,
    targets_BxL: Array,
    weights_BxL: Array,
    chunk_len: int = 0,
    vocab_size: int | None = None,
    logits_dtype=jnp.float32,
) -> tuple[Array, Array]:
    """The tied output layer and its cross-entropy in one: ``(loss_sum, argmax_BxL)``.

    ``loss_sum = sum(weights * cross_entropy(x @ embedding.T, targets))`` over
    the logits (written by the matmul in ``logits_dtype``, read in float32),
    and ``argmax_BxL`` the predicted tokens.  The ``[B, L, V]``
    logits -- the largest activation of a language model (GPT-2 124M at batch
    8 x 1024: 1.6 GB in float32) -- are never held whole: they are formed
    ``chunk_len`` positions at a time (0 = all at once), and under
    differentiation each chunk's gradient goes straight into the two matmuls
    that give the gradients of ``x`` and of the embedding (computed in the
    forward pass, as in Liger Kernel's fused linear cross-entropy; the backward
    pass only scales them by the incoming cotangent).

    The gradient ``w * (softmax - one_hot)`` is never formed as such: the pass
    that sums ``exp(logits - max)`` also writes it (rounded to ``x``'s dtype)
    for the matmuls, whose other side carries the per-row ``w / sum``, and the
    one-hot part comes from the targets' embedding rows (a ``[B, L, D]``
    gather and scatter-add, in float32).  Each chunk's logits are thus written
    once and read three times (max; argmax, see :func:`row_max_and_argmax`;
    exp and sum).  The matmuls run in ``x``'s dtype and accumulate in float32
    (bf16 compute gets bf16 matmuls in both directions).  With ``vocab_size``
    below the embedding's rows, the rows past it (padding) are never
    predicted.
    """
    vocab_size = embedding_VxD.shape[0] if vocab_size is None else vocab_size
    targets_BxL, weights_BxL = targets_BxL.astype(jnp.int32), weights_BxL.astype(jnp.float32)
    dtypes = (x_BxLxD.dtype, embedding_VxD.dtype)
    args = (x_BxLxD, embedding_VxD, targets_BxL, weights_BxL, chunk_len, vocab_size, logits_dtype)
    return _tied_cross_entropy(*args, *dtypes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _tied_cross_entropy(
    x_BxLxD, embedding_VxD, targets_BxL, weights_BxL, chunk_len, vocab_size, logits_dtype, x_dtype, emb_dtype
):
    del x_dtype, emb_dtype  # for the backward pass: the cotangents' dtypes
    args = (x_BxLxD, embedding_VxD, targets_BxL, weights_BxL, chunk_len, vocab_size, logits_dtype)
    _, argmax_BxL, loss_sum, _, _ = _loss_and_grads(*args, with_grads=False)
    return loss_sum, argmax_BxL


def _tied_cross_entropy_fwd(
    x_BxLxD, embedding_VxD, targets_BxL, weights_BxL, chunk_len, vocab_size, logits_dtype, x_dtype, emb_dtype
):
    del x_dtype, emb_dtype
    args = (x_BxLxD, embedding_VxD, targets_BxL, weights_BxL, chunk_len, vocab_size, logits_dtype)
    token_loss_BxL, argmax_BxL, loss_sum, dx_BxLxD, demb_VxD = _loss_and_grads(*args, with_grads=True)
    return (loss_sum, argmax_BxL), (dx_BxLxD, demb_VxD, token_loss_BxL)


def _tied_cross_entropy_bwd(chunk_len, vocab_size, logits_dtype, x_dtype, emb_dtype, residuals, g):
    del chunk_len, vocab_size, logits_dtype
    dx_BxLxD, demb_VxD, token_loss_BxL = residuals
    g_loss = g[0]  # the argmax has no gradient
    return (
        (g_loss * dx_BxLxD).astype(x_dtype),
        (g_loss * demb_VxD).astype(emb_dtype),
        np.zeros(token_loss_BxL.shape, jax.dtypes.float0),
        g_loss * token_loss_BxL,
    )


_tied_cross_entropy.defvjp(_tied_cross_entropy_fwd, _tied_cross_entropy_bwd)


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
