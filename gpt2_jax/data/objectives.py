"""Objectives: turn token windows into the batch schema of each architecture.

The same windows and cut points give every architecture the same target tokens
with loss (see :mod:`gpt2_jax.batch`), so a config can switch ``model.arch``
without touching data code.

Language modelling on a window ``w`` of ``W = L + 1`` tokens cut at ``P``
(prefix ``w[:P]``, continuation ``w[P:]``):

* ``decoder_only`` / ``prefix_lm``: inputs ``w[:-1]``, targets ``w[1:]`` (length
  ``L``).  Loss on the continuation targets (positions ``P-1 .. L-1``), or on
  every target when ``loss="all"`` (decoder-only only).  For ``prefix_lm`` the
  positions whose input is a prefix token (``0 .. P-1``) are bidirectional.
* ``encoder_decoder``: the encoder reads ``w[:P]``; the decoder reads
  ``[bos] + w[P:-1]`` and predicts ``w[P:]``.

Masked LM (``encoder_only``) on a window of ``L`` tokens: BERT's corruption of
a fixed share of positions (80% mask token, 10% random token, 10% unchanged),
loss on the corrupted positions.
"""

from __future__ import annotations

import numpy as np

from gpt2_jax.data.tokenizers import Tokenizer


def _positions(batch_size: int, length: int) -> np.ndarray:
    return np.broadcast_to(np.arange(length, dtype=np.int32), (batch_size, length)).copy()


def lm_batch(
    windows_BxW: np.ndarray,
    cuts_B: np.ndarray,
    arch: str,
    tokenizer: Tokenizer,
    loss: str = "continuation",
    encoder_len: int | None = None,
    decoder_len: int | None = None,
) -> dict[str, np.ndarray]:
    """Language-modelling batch for ``arch`` from windows and per-row cut points.

    Args:
      windows_BxW: ``[B, W]`` token windows, ``W = L + 1``.
      cuts_B: ``[B]`` prefix lengths, ``1 <= cut <= L``.
      arch: the architecture the batch is for.
      tokenizer: supplies the pad and bos ids.
      loss: ``"continuation"`` or ``"all"`` (every target; decoder_only only).
      encoder_len, decoder_len: padded lengths of the encoder-decoder stacks
        (defaults: the largest prefix and continuation in this batch).
        Fix them when every batch of a run must have the same shape.
    """
    B, W = windows_BxW.shape
    L = W - 1
    cuts_B = np.asarray(cuts_B, np.int32)
    if np.any(cuts_B < 1) or np.any(cuts_B > L):
        raise ValueError(f"cut points must lie in [1, {L}], got {cuts_B.min()}..{cuts_B.max()}")
    if loss == "all" and arch != "decoder_only":
        raise ValueError(f"loss='all' is only meaningful for decoder_only, not {arch!r}")
    if arch == "encoder_decoder":
        return _encoder_decoder_lm(windows_BxW, cuts_B, tokenizer, encoder_len, decoder_len)
    idx_L = np.arange(L)
    weights = np.ones((B, L), np.float32) if loss == "all" else (idx_L[None] >= cuts_B[:, None] - 1).astype(np.float32)
    out = {
        "input_tokens": windows_BxW[:, :-1].astype(np.int32),
        "target_tokens": windows_BxW[:, 1:].astype(np.int32),
        "loss_weights": weights,
        "positions": _positions(B, L),
    }
    if arch == "prefix_lm":
        out["bidirectional"] = (idx_L[None] < cuts_B[:, None]).astype(np.int32)
    return out


def _encoder_decoder_lm(
    windows_BxW: np.ndarray,
    cuts_B: np.ndarray,
    tokenizer: Tokenizer,
    encoder_len: int | None,
    decoder_len: int | None,
) -> dict[str, np.ndarray]:
    B, W = windows_BxW.shape
    S = int(cuts_B.max()) if encoder_len is None else encoder_len
    T = int(W - cuts_B.min()) if decoder_len is None else decoder_len
    pad = tokenizer.pad_id
    rows = np.arange(B)[:, None]

    enc_idx_S = np.arange(S)[None]
    enc_valid = enc_idx_S < cuts_B[:, None]
    enc_tokens = np.where(enc_valid, windows_BxW[rows, np.minimum(enc_idx_S, W - 1)], pad)

    src_BxT = cuts_B[:, None] + np.arange(T)[None]  # window index of each target
    dec_valid = src_BxT < W
    targets = np.where(dec_valid, windows_BxW[rows, np.minimum(src_BxT, W - 1)], pad)
    inputs = np.where(dec_valid, windows_BxW[rows, np.clip(src_BxT - 1, 0, W - 1)], pad)
    inputs[:, 0] = tokenizer.bos_id
    out = {
        "encoder_input_tokens": enc_tokens.astype(np.int32),
        "encoder_positions": _positions(B, S),
        "encoder_segment_ids": enc_valid.astype(np.int32),
        "input_tokens": inputs.astype(np.int32),
        "target_tokens": targets.astype(np.int32),
        "loss_weights": dec_valid.astype(np.float32),
        "positions": _positions(B, T),
    }
    if not dec_valid.all():
        out["segment_ids"] = dec_valid.astype(np.int32)
    return out


def mlm_batch(
    windows_BxL: np.ndarray, tokenizer: Tokenizer, mask_rate: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """BERT masked-LM batch: corrupt ``round(mask_rate * L)`` positions per row (at least 1).

    Of the chosen positions 80% become the mask token, 10% a random ordinary
    token and 10% stay unchanged; loss is on all chosen positions.
    """
    B, L = windows_BxL.shape
    k = max(1, round(mask_rate * L))
    chosen = np.argsort(rng.random((B, L)), axis=1)[:, :k]
    weights = np.zeros((B, L), np.float32)
    np.put_along_axis(weights, chosen, 1.0, axis=1)
    action = rng.random((B, L))
    random_tokens = rng.integers(tokenizer.num_specials, tokenizer.vocab_size, size=(B, L))
    corrupted = np.where(action < 0.8, tokenizer.mask_id, np.where(action < 0.9, random_tokens, windows_BxL))
    inputs = np.where(weights > 0, corrupted, windows_BxL)
    return {
        "input_tokens": inputs.astype(np.int32),
        "target_tokens": windows_BxL.astype(np.int32),
        "loss_weights": weights,
        "positions": _positions(B, L),
    }
