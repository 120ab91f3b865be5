"""Objectives: turn examples into the batch schema of each architecture (the feature converter).

Every objective produces :class:`Example` s, a ``prefix`` (context) and a
``continuation`` (what is predicted).  :func:`convert` lays them out for one
architecture, so a config switches ``model.arch`` without touching data code,
and every architecture puts loss on exactly the continuation tokens:

==================  ===============================================  ==========================
arch                stack input                                      loss on
==================  ===============================================  ==========================
``decoder_only``    ``prefix + continuation`` (shifted by one)       continuation, or every
                                                                     token with ``loss="all"``
``prefix_lm``       the same, bidirectional over the prefix          continuation
``encoder_decoder`` encoder: prefix; decoder: ``[bos] + continuation``  continuation
``encoder_only``    ``prefix + [mask] * len(continuation)``          continuation
==================  ===============================================  ==========================

Objectives: language modelling on windows cut into prefix and continuation
(T5 section 3.2.3 / Wang et al. 2022; a cut of 1 with ``loss="all"`` is the
plain GPT-2 objective), sequence-to-sequence on pairs (``source <sep>`` as the
prefix, ``target <eos>`` as the continuation), T5's span corruption, and BERT's
masked LM (:func:`mlm_batch`, encoder-only).

Rows are either one example each (padded) or packed with several examples
(``segment_ids`` 1, 2, ...; positions restart in each), so that the masks never
let one example see another.  Packing fills rows by each example's footprint
(its widest layout over all architectures), so the same examples share a row,
and a batch holds the same targets, whatever the architecture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from gpt2_jax.data.tokenizers import Tokenizer
from gpt2_jax.errors import DataError


@dataclasses.dataclass
class Example:
    """One training/eval example: context ``prefix`` and predicted ``continuation`` (token ids).

    ``masked_view`` overrides the encoder-only layout with ``(tokens, mask)``:
    the model reads ``tokens`` with the masked positions replaced by the mask
    token and predicts them (e.g. a reversal-curse query whose answer comes
    first in the sentence).
    """

    prefix: np.ndarray
    continuation: np.ndarray
    masked_view: tuple[np.ndarray, np.ndarray] | None = None

    def length(self, arch: str) -> int:
        """Positions this example takes in a row of ``arch`` (the longer stream for encoder-decoder)."""
        p, c = len(self.prefix), len(self.continuation)
        if arch == "encoder_decoder":
            return max(p, c)
        if arch == "encoder_only":
            return len(self.masked_view[0]) if self.masked_view is not None else p + c
        return p + c - 1

    def footprint(self) -> int:
        """Positions of this example's widest layout over all architectures.

        Packing budgets rows by footprint rather than by the architecture's own
        length, so every architecture groups the same examples into the same
        rows: an encoder-decoder, whose decoder row holds only targets, would
        otherwise pack about twice as many examples per step as a decoder-only
        model and see twice the targets.
        """
        return max(self.length(arch) for arch in ("decoder_only", "encoder_decoder", "encoder_only"))


def seq2seq_example(source: np.ndarray, target: np.ndarray, tokenizer: Tokenizer) -> Example:
    """Paired data: prefix ``source <sep>``, continuation ``target <eos>``."""
    return Example(
        np.concatenate([source, [tokenizer.sep_id]]).astype(np.int32),
        np.concatenate([target, [tokenizer.eos_id]]).astype(np.int32),
    )


# --------------------------------------------------------------------------- layout


def _streams(
    ex: Example, arch: str, tokenizer: Tokenizer, loss: str, target_positions: str = "continue"
) -> dict[str, dict[str, np.ndarray]]:
    """Per-position fields of one example: ``{"decoder": {...}, "encoder": {...}}``.

    ``target_positions="restart"`` (single stacks): the position that predicts
    continuation token ``j`` is ``j``, as in an encoder-decoder's decoder (whose
    ``<bos>`` at position 0 predicts token 0), so that it meets source token
    ``j`` at the same position; the prefix before it keeps positions ``0, 1, ...``.
    """
    if arch == "encoder_decoder":
        cont = ex.continuation
        dec = {
            "input_tokens": np.concatenate([[tokenizer.bos_id], cont[:-1]]),
            "target_tokens": cont,
            "loss_weights": np.ones(len(cont), np.float32),
        }
        return {"decoder": dec, "encoder": {"encoder_input_tokens": ex.prefix}}
    if arch == "encoder_only":
        if ex.masked_view is not None:
            tokens, mask = ex.masked_view
        else:
            tokens = np.concatenate([ex.prefix, ex.continuation])
            mask = np.arange(len(tokens)) >= len(ex.prefix)
        dec = {
            "input_tokens": np.where(mask, tokenizer.mask_id, tokens),
            "target_tokens": tokens,
            "loss_weights": np.asarray(mask, np.float32),
        }
        return {"decoder": dec}
    seq = np.concatenate([ex.prefix, ex.continuation])
    n = len(seq) - 1
    idx = np.arange(n)
    first_target = len(ex.prefix) - 1  # the input position that predicts the continuation's first token
    dec = {
        "input_tokens": seq[:-1],
        "target_tokens": seq[1:],
        "loss_weights": np.ones(n, np.float32) if loss == "all" else (idx >= first_target).astype(np.float32),
    }
    if target_positions == "restart":
        dec["positions"] = np.where(idx < first_target, idx, idx - first_target)
    if arch == "prefix_lm":
        dec["bidirectional"] = (idx < len(ex.prefix)).astype(np.int32)
    return {"decoder": dec}


class RowBuilder:
    """Fills ``rows`` rows of fixed lengths with examples, one per row or packed.

    Packed rows take examples while the sum of their footprints
    (:meth:`Example.footprint`) fits in ``length``, which makes the grouping of
    examples into rows independent of ``arch``.
    """

    def __init__(
        self,
        arch: str,
        tokenizer: Tokenizer,
        rows: int,
        length: int,
        encoder_length: int | None = None,
        loss: str = "continuation",
        pack: bool = False,
        target_positions: str = "continue",
    ):
        if loss == "all" and arch != "decoder_only":
            raise ValueError(f"loss='all' is only meaningful for decoder_only, not {arch!r}")
        self.arch, self.tokenizer, self.loss, self.pack = arch, tokenizer, loss, pack
        self.target_positions = target_positions
        self.rows = rows
        self.lengths = {"decoder": length, "encoder": encoder_length or length}
        self.used = {"decoder": np.zeros(rows, int), "encoder": np.zeros(rows, int)}
        self.count = np.zeros(rows, int)  # examples placed per row
        self.footprints = np.zeros(rows, int)  # summed example footprints per row
        self.row = 0
        self.fields: dict[str, np.ndarray] = {}
        self._alloc("decoder", ("input_tokens", "target_tokens", "positions", "segment_ids"), np.int32)
        self._alloc("decoder", ("loss_weights",), np.float32)
        if arch == "prefix_lm":
            self._alloc("decoder", ("bidirectional",), np.int32)
        if arch == "encoder_decoder":
            self._alloc("encoder", ("encoder_input_tokens", "encoder_positions", "encoder_segment_ids"), np.int32)

    def _alloc(self, stream: str, names: tuple[str, ...], dtype) -> None:
        for name in names:
            fill = self.tokenizer.pad_id if name.endswith("tokens") else 0
            self.fields[name] = np.full((self.rows, self.lengths[stream]), fill, dtype)

    @property
    def full(self) -> bool:
        return self.row >= self.rows

    def add(self, ex: Example) -> bool:
        """Place ``ex``; False when no row has room left (the batch is complete)."""
        streams = _streams(ex, self.arch, self.tokenizer, self.loss, self.target_positions)
        sizes = {s: len(next(iter(f.values()))) for s, f in streams.items()}
        for s, n in sizes.items():
            if n > self.lengths[s]:
                raise DataError(
                    f"an example needs {n} positions but rows hold {self.lengths[s]}; raise config.data.seq_len"
                )
        footprint = ex.footprint()
        while not self.full:
            r = self.row
            fits = all(self.used[s][r] + n <= self.lengths[s] for s, n in sizes.items())
            if self.count[r] == 0 or (fits and self.pack and self.footprints[r] + footprint <= self.lengths["decoder"]):
                break
            self.row += 1
        if self.full:
            return False
        r = self.row
        segment = self.count[r] + 1
        for stream, values in streams.items():
            start, n = self.used[stream][r], sizes[stream]
            span = slice(start, start + n)
            prefix = "encoder_" if stream == "encoder" else ""
            self.fields[prefix + "positions"][r, span] = np.arange(n)  # restart in every packed example
            for name, value in values.items():
                self.fields[name][r, span] = value
            self.fields[prefix + "segment_ids"][r, span] = segment
            self.used[stream][r] += n
        self.count[r] += 1
        self.footprints[r] += footprint
        if not self.pack:
            self.row += 1
        return True

    def batch(self, with_segment_ids: bool = True) -> dict[str, np.ndarray]:
        """The assembled batch.  ``with_segment_ids=False`` drops them when every row is exactly one full example."""
        out = dict(self.fields)
        if not with_segment_ids:
            if not np.all(out["segment_ids"] == 1):
                raise ValueError("rows are padded or packed: they need segment_ids")
            del out["segment_ids"]
        return out


def convert(
    examples: Iterable[Example],
    arch: str,
    tokenizer: Tokenizer,
    rows: int,
    length: int,
    encoder_length: int | None = None,
    loss: str = "continuation",
    pack: bool = False,
    with_segment_ids: bool = True,
    target_positions: str = "continue",
) -> dict[str, np.ndarray]:
    """A batch of ``rows`` rows from ``examples`` (all of which must fit)."""
    builder = RowBuilder(arch, tokenizer, rows, length, encoder_length, loss, pack, target_positions)
    for ex in examples:
        if not builder.add(ex):
            raise ValueError(f"{rows} rows of length {length} cannot hold all the examples")
    return builder.batch(with_segment_ids)


def window_examples(windows_BxW: np.ndarray, cuts_B: np.ndarray) -> list[Example]:
    """Language-modelling examples: each window cut into prefix ``w[:cut]`` and continuation ``w[cut:]``."""
    W = windows_BxW.shape[1]
    if np.any(cuts_B < 1) or np.any(cuts_B > W - 1):
        raise ValueError(f"cut points must lie in [1, {W - 1}], got {cuts_B.min()}..{cuts_B.max()}")
    return [Example(w[:c], w[c:]) for w, c in zip(windows_BxW, cuts_B, strict=True)]


def lm_batch(
    windows_BxW: np.ndarray,
    cuts_B: np.ndarray,
    arch: str,
    tokenizer: Tokenizer,
    loss: str = "continuation",
    encoder_len: int | None = None,
    decoder_len: int | None = None,
) -> dict[str, np.ndarray]:
    """Language-modelling batch from windows of ``W = L + 1`` tokens and per-row cut points.

    Decoder-only and prefix-LM rows have length ``L``; encoder-decoder rows
    default to the largest prefix and continuation of the batch.  Full rows
    carry no ``segment_ids`` (so causal attention needs no mask tensor).
    """
    B, W = windows_BxW.shape
    cuts_B = np.asarray(cuts_B, np.int32)
    examples = window_examples(windows_BxW, cuts_B)
    if arch == "encoder_decoder":
        enc = int(cuts_B.max()) if encoder_len is None else encoder_len
        dec = int(W - cuts_B.min()) if decoder_len is None else decoder_len
        out = convert(examples, arch, tokenizer, B, dec, enc, loss)
        if np.all(out["segment_ids"] == 1):
            del out["segment_ids"]
        return out
    return convert(examples, arch, tokenizer, B, W - 1, loss=loss, with_segment_ids=False)


# --------------------------------------------------------------------------- corruption


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
    random_tokens = rng.integers(*tokenizer.ordinary_range, size=(B, L))
    corrupted = np.where(action < 0.8, tokenizer.mask_id, np.where(action < 0.9, random_tokens, windows_BxL))
    inputs = np.where(weights > 0, corrupted, windows_BxL)
    return {
        "input_tokens": inputs.astype(np.int32),
        "target_tokens": windows_BxL.astype(np.int32),
        "loss_weights": weights,
        "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy(),
    }


def _random_segmentation(total: int, pieces: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` items into ``pieces`` non-empty runs, uniformly at random."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=pieces - 1, replace=False)) if pieces > 1 else []
    return np.diff(np.concatenate([[0], cuts, [total]])).astype(int)


def noise_spans(length: int, density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, spans) of T5's span corruption for a text of ``length`` tokens."""
    num_noise = min(max(round(length * density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span), 1)
    return num_noise, num_spans


def span_corruption(
    tokens: np.ndarray, tokenizer: Tokenizer, density: float, mean_span: float, rng: np.random.Generator
) -> Example:
    """T5's span corruption of one text: noise spans replaced by sentinels in the prefix, spelled out in the target.

    ``"a b c d e f"`` with noise ``c d`` and ``f`` becomes prefix
    ``a b <s0> e <s1>`` and continuation ``<s0> c d <s1> f <eos>``.
    """
    n = len(tokens)
    num_noise, num_spans = noise_spans(n, density, mean_span)
    if num_spans > len(tokenizer.sentinel_ids):
        raise DataError(
            f"span corruption of {n} tokens needs {num_spans} sentinels but the tokenizer has "
            f"{len(tokenizer.sentinel_ids)}; set config.data.num_sentinels >= {num_spans}"
        )
    num_spans = min(num_spans, num_noise, n - num_noise)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    keep_lengths = _random_segmentation(n - num_noise, num_spans, rng)
    prefix, continuation, pos = [], [], 0
    for i in range(num_spans):
        sentinel = tokenizer.sentinel_ids[i]
        prefix.extend(tokens[pos : pos + keep_lengths[i]])
        pos += keep_lengths[i]
        prefix.append(sentinel)
        continuation.append(sentinel)
        continuation.extend(tokens[pos : pos + noise_lengths[i]])
        pos += noise_lengths[i]
    continuation.append(tokenizer.eos_id)
    return Example(np.asarray(prefix, np.int32), np.asarray(continuation, np.int32))


def span_corruption_window(seq_len: int, density: float, mean_span: float) -> int:
    """The longest text whose corrupted prefix + continuation fit in ``seq_len`` positions for every arch."""
    for n in range(seq_len, 1, -1):
        _, spans = noise_spans(n, density, mean_span)
        if n + 2 * spans + 1 <= seq_len:
            return n
    raise DataError(f"config.data.seq_len={seq_len} is too short for span corruption")
