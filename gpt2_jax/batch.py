"""One batch schema for every architecture (T5X feature-converter style).

A batch is a ``dict`` of numpy/jax arrays.  Decoder-side fields (the main
stream of every architecture; for ``encoder_only`` it is the encoder's stream):

=====================  ========  =============================================
field                  shape     meaning
=====================  ========  =============================================
``input_tokens``       [B, L]    tokens fed to the stack (for ``encoder_only``
                                 the corrupted tokens)
``target_tokens``      [B, L]    tokens to predict at each position
``loss_weights``       [B, L]    float; 0 where no loss is taken
``positions``          [B, L]    position ids (restart at 0 in each packed
                                 example)
``segment_ids``        [B, L]    optional; example id per position, 0 = pad.
                                 Absent means one unpadded example per row.
``bidirectional``      [B, L]    ``prefix_lm`` only: 1 on prefix positions
                                 (T5X ``decoder_causal_attention``)
=====================  ========  =============================================

Encoder-side fields (``encoder_decoder`` only):
``encoder_input_tokens``, ``encoder_positions``, ``encoder_segment_ids``, all
``[B, S]``.

Because decoder-only, prefix-LM and encoder-decoder batches built from one
example carry the same ``target_tokens`` with nonzero ``loss_weights``,
comparisons between them put loss on exactly the same tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ARCHITECTURES = ("decoder_only", "prefix_lm", "encoder_decoder", "encoder_only")

DECODER_FIELDS = ("input_tokens", "target_tokens", "loss_weights", "positions")
ENCODER_FIELDS = ("encoder_input_tokens", "encoder_positions", "encoder_segment_ids")


def required_fields(arch: str) -> tuple[str, ...]:
    """The fields a batch must carry for ``arch``."""
    if arch == "decoder_only" or arch == "encoder_only":
        return DECODER_FIELDS
    if arch == "prefix_lm":
        return (*DECODER_FIELDS, "bidirectional")
    if arch == "encoder_decoder":
        return DECODER_FIELDS + ENCODER_FIELDS
    raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")


def validate(batch: Mapping[str, np.ndarray], arch: str) -> None:
    """Raise a ``ValueError`` naming the problem if ``batch`` does not fit ``arch``."""
    missing = [f for f in required_fields(arch) if f not in batch]
    if missing:
        raise ValueError(f"batch for arch={arch!r} is missing fields {missing}; it has {sorted(batch)}")
    shape = np.shape(batch["input_tokens"])
    if len(shape) != 2:
        raise ValueError(f"input_tokens must be [batch, length], got shape {shape}")
    for name in (*DECODER_FIELDS, "segment_ids", "bidirectional"):
        if name in batch and np.shape(batch[name]) != shape:
            raise ValueError(f"{name} has shape {np.shape(batch[name])}, expected {shape} like input_tokens")
    if arch == "encoder_decoder":
        enc_shape = np.shape(batch["encoder_input_tokens"])
        for name in ENCODER_FIELDS:
            if np.shape(batch[name]) != enc_shape:
                raise ValueError(f"{name} has shape {np.shape(batch[name])}, expected {enc_shape}")
        if enc_shape[0] != shape[0]:
            raise ValueError(f"encoder batch size {enc_shape[0]} != decoder batch size {shape[0]}")


def dummy(
    arch: str, batch_size: int, length: int, encoder_length: int | None = None, vector_dim: int = 0
) -> dict[str, np.ndarray]:
    """A zero batch with the right fields and shapes, for initialisation and shape inference."""
    encoder_length = encoder_length or length
    ints = np.zeros((batch_size, length), np.int32)
    out = {
        "input_tokens": ints,
        "target_tokens": ints,
        "loss_weights": np.ones((batch_size, length), np.float32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch_size, length)).copy(),
    }
    if arch == "prefix_lm":
        out["bidirectional"] = ints
    if arch == "encoder_decoder":
        out["encoder_input_tokens"] = np.zeros((batch_size, encoder_length), np.int32)
        out["encoder_positions"] = np.broadcast_to(
            np.arange(encoder_length, dtype=np.int32), (batch_size, encoder_length)
        ).copy()
        out["encoder_segment_ids"] = np.ones((batch_size, encoder_length), np.int32)
    if vector_dim:
        out["input_vectors"] = np.zeros((batch_size, length, vector_dim), np.float32)
        if arch == "encoder_decoder":
            out["encoder_input_vectors"] = np.zeros((batch_size, encoder_length, vector_dim), np.float32)
    return out


def count_tokens(batch: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(tokens processed, tokens carrying loss) in one batch.

    Tokens processed are the real (non-padding) positions of both stacks.
    """
    if "segment_ids" in batch:
        seen = int(np.count_nonzero(batch["segment_ids"]))
    else:
        seen = int(np.size(batch["input_tokens"]))
    if "encoder_segment_ids" in batch:
        seen += int(np.count_nonzero(batch["encoder_segment_ids"]))
    with_loss = int(np.count_nonzero(batch["loss_weights"]))
    return seen, with_loss
