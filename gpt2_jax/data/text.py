"""Language modelling on one plain-text corpus (nanoGPT's shakespeare_char setup).

The text is tokenized once; the first ``train_fraction`` of the ids trains and
the rest validates.  Training rows are random windows; the batch of step ``s``
is a pure function of ``(seed, s)``, so the iterator's position is just the step
and a resumed run sees exactly the batches an uninterrupted one would.
Evaluation walks the **whole** validation split in non-overlapping windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gpt2_jax.data import objectives, paths, tokenizers
from gpt2_jax.errors import DataError


def read_text(path: Path) -> str:
    """Read a UTF-8 text file, with errors that say what to change."""
    if not path.exists():
        raise DataError(
            f"corpus file {path} does not exist; set config.data.corpus to an existing file "
            f"or point ${paths.DATA_DIR_ENV} (or config.data.data_dir) at the folder that holds it"
        )
    if path.is_dir():
        raise DataError(f"corpus {path} is a directory; config.data.corpus must name a text file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"corpus file {path} is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"corpus file {path} is not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 1]!r})"
        ) from None


class TextLM:
    """Train/eval batches for one architecture from a single text corpus."""

    def __init__(self, data_config, arch: str, seed: int, batch_size: int, eval_batch_size: int):
        self.arch = arch
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seq_len = int(data_config.seq_len)
        self.objective = data_config.objective
        if self.objective == "auto":
            self.objective = "mlm" if arch == "encoder_only" else "lm"
        self.cut_fraction = float(data_config.cut_fraction)
        self.random_cut = bool(data_config.random_cut)
        self.mask_rate = float(data_config.mask_rate)
        self.loss = data_config.decoder_only_loss if arch == "decoder_only" else "continuation"

        path = paths.resolve(data_config.corpus, data_config.data_dir)
        text = read_text(path)
        self.tokenizer = tokenizers.build(data_config.tokenizer, text)
        ids = self.tokenizer.encode(text)
        n_train = int(len(ids) * float(data_config.train_fraction))
        self.train_ids, self.eval_ids = ids[:n_train], ids[n_train:]
        self.window = self.seq_len + 1 if self.objective == "lm" else self.seq_len
        for split, split_ids in (("training", self.train_ids), ("validation", self.eval_ids)):
            if len(split_ids) < self.window:
                raise DataError(
                    f"the {split} split of {path} has {len(split_ids)} tokens, fewer than one context window "
                    f"of {self.window}; lower config.data.seq_len or use a longer corpus"
                )
        self.fixed_cut = min(max(round(self.cut_fraction * self.seq_len), 1), self.seq_len)

    # -- shapes ---------------------------------------------------------------

    @property
    def encoder_len(self) -> int:
        """Padded encoder length of encoder-decoder batches."""
        return self.seq_len if self.random_cut else self.fixed_cut

    @property
    def decoder_len(self) -> int:
        """Decoder length: ``seq_len`` except for encoder-decoder rows (the continuation)."""
        if self.arch != "encoder_decoder":
            return self.seq_len
        return self.seq_len if self.random_cut else self.window - self.fixed_cut

    @property
    def max_len(self) -> int:
        """Longest position index + 1 of any stack."""
        return max(self.decoder_len, self.encoder_len if self.arch == "encoder_decoder" else 0)

    # -- batches --------------------------------------------------------------

    def _rows(self, windows: np.ndarray, cuts: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.objective == "mlm":
            return objectives.mlm_batch(windows, self.tokenizer, self.mask_rate, rng)
        return objectives.lm_batch(
            windows, cuts, self.arch, self.tokenizer, self.loss, self.encoder_len, self.decoder_len
        )

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        """The training batch of optimizer step ``step`` (deterministic in ``(seed, step)``)."""
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.train_ids) - self.window + 1, size=self.batch_size)
        windows = self.train_ids[starts[:, None] + np.arange(self.window)[None]]
        if self.random_cut:
            cuts = rng.integers(1, self.seq_len + 1, size=self.batch_size)
        else:
            cuts = np.full(self.batch_size, self.fixed_cut)
        return self._rows(windows, cuts, rng)

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """The whole validation split in fixed-shape batches, identical on every call.

        Full-LM and masked-LM windows tile the split so every token is scored
        once (the last window is padded); cut objectives score the continuation
        of each non-overlapping window.  Padding rows and positions carry
        ``segment_ids`` 0 and no loss.
        """
        ids = self.eval_ids
        scores_every_token = self.objective == "mlm" or self.loss == "all"
        # A full-LM window of W tokens scores W - 1 targets; consecutive windows
        # overlap by one token so every target is scored exactly once.
        stride = self.window - 1 if self.objective == "lm" and scores_every_token else self.window
        if scores_every_token:
            starts = np.arange(0, len(ids) - (self.window - stride), stride)
        else:
            starts = np.arange(0, len(ids) - self.window + 1, stride)
        rng = np.random.default_rng([self.seed, 2**31 - 1])  # fixed corruption for mlm
        for first in range(0, len(starts), self.eval_batch_size):
            chunk = starts[first : first + self.eval_batch_size]
            windows = np.full((self.eval_batch_size, self.window), self.tokenizer.pad_id, np.int32)
            valid = np.zeros((self.eval_batch_size, self.window), bool)
            for row, start in enumerate(chunk):
                piece = ids[start : start + self.window]
                windows[row, : len(piece)] = piece
                valid[row, : len(piece)] = True
            cuts = np.full(self.eval_batch_size, self.fixed_cut)
            batch = self._rows(windows, cuts, rng)
            self._mask_padding(batch, valid)
            yield batch

    def _mask_padding(self, batch: dict[str, np.ndarray], valid_BxW: np.ndarray) -> None:
        """Zero the loss and segment ids of padded positions, in place."""
        if self.arch == "encoder_decoder":
            rows_valid = valid_BxW.all(axis=1, keepdims=True)
            batch["encoder_segment_ids"] = batch["encoder_segment_ids"] * rows_valid
            seg = batch.get("segment_ids", np.ones_like(batch["input_tokens"]))
            batch["segment_ids"] = (seg * rows_valid).astype(np.int32)
        else:
            # Position i reads token i and predicts token i+1 (lm) or token i (mlm).
            read_ok = valid_BxW[:, : batch["input_tokens"].shape[1]]
            target_ok = valid_BxW[:, 1:] if self.objective == "lm" else read_ok
            batch["segment_ids"] = read_ok.astype(np.int32)
            batch["loss_weights"] = batch["loss_weights"] * target_ok
        batch["loss_weights"] = batch["loss_weights"] * batch["segment_ids"]

    def state(self, next_step: int) -> dict:
        """The iterator's position, saved with checkpoints."""
        return {"kind": "text_lm", "seed": self.seed, "next_step": next_step}
