"""Datasets: a source, a tokenizer and an objective, served as batches of one architecture.

Every dataset offers

* ``train_iterator(state)``: an iterator of global training batches whose
  position (``get_state()``) is saved with each checkpoint and restored on
  resume, so a resumed run continues exactly where it stopped;
* ``eval_splits``: split name -> a function returning that split's batches,
  covering the **whole** split in fixed-shape batches, identical on every call;
* ``max_len`` (positions any stack needs) and ``tokenizer``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np

from gpt2_jax.data import objectives, sources
from gpt2_jax.data.objectives import Example, RowBuilder
from gpt2_jax.data.tokenizers import Tokenizer
from gpt2_jax.errors import DataError

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
EvalSplits = dict[str, Callable[[], Iterator[Batch]]]


def cut_tokens(fraction: float, seq_len: int) -> int:
    """The prefix length of a window cut at ``fraction`` of the context (at least 1 token on each side)."""
    return min(max(round(fraction * seq_len), 1), seq_len)


class StepIterator:
    """Batches that are a pure function of ``(seed, step)``; the state is the next step."""

    def __init__(self, make_batch: Callable[[int], Batch], state: dict | None = None):
        self._make = make_batch
        self.step = int(state["step"]) if state else 0

    def __iter__(self) -> StepIterator:
        return self

    def __next__(self) -> Batch:
        batch = self._make(self.step)
        self.step += 1
        return batch

    def get_state(self) -> dict:
        return {"step": self.step}


class EpochIterator:
    """Examples in a fresh random order each epoch, placed into rows (padded or packed).

    The state is ``(epoch, index)`` of the next example not yet placed; an
    example that does not fit in the current batch opens the next one.
    """

    def __init__(
        self,
        examples: list[Example],
        new_builder: Callable[[], RowBuilder],
        seed: int,
        state: dict | None = None,
    ):
        self.examples, self.new_builder, self.seed = examples, new_builder, seed
        self.epoch = int(state["epoch"]) if state else 0
        self.index = int(state["index"]) if state else 0
        self._order = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def __iter__(self) -> EpochIterator:
        return self

    def __next__(self) -> Batch:
        builder = self.new_builder()
        while builder.add(self.examples[self._order[self.index]]):
            self.index += 1
            if self.index == len(self.examples):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return builder.batch()

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}


def _eval_batches(examples: list[Example], new_builder: Callable[[], RowBuilder]) -> Iterator[Batch]:
    """Every example once, one per row, in order; the last batch is padded with empty rows."""
    builder = new_builder()
    for ex in examples:
        if not builder.add(ex):
            yield builder.batch()
            builder = new_builder()
            builder.add(ex)
    if builder.count.any():
        yield builder.batch()


class TextDataset:
    """Language modelling on a text corpus: cut-LM (all causal archs), BERT masked LM, or T5 span corruption.

    Training rows are random windows (nanoGPT's sampler): the batch of step
    ``s`` is a pure function of ``(seed, s)``.  Evaluation walks the whole
    validation split in non-overlapping windows.
    """

    vector_dim = 0

    def __init__(self, config, source: sources.Source, tokenizer: Tokenizer, objective: str, loss: str):
        d = config.data
        self.arch = config.model.arch
        self.seed = config.seed
        self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
        self.seq_len = int(d.seq_len)
        self.tokenizer = tokenizer
        # mixture (UL2's remedy): random-cut rows, a share of them cut after their first token (a full-LM row).
        self.full_lm_share = float(d.mixture_full_lm_share) if objective == "mixture" else 0.0
        self.objective = "lm" if objective == "mixture" else objective
        self.random_cut = bool(d.random_cut) or objective == "mixture"
        self.mask_rate = float(d.mask_rate)
        self.density, self.mean_span = float(d.noise_density), float(d.mean_noise_span_length)
        self.loss = loss
        self.target_positions = d.target_positions
        self.train_ids = tokenizer.encode(source.texts("train"))
        self.eval_ids = tokenizer.encode(source.texts("validation"))
        if self.objective == "lm":
            self.window = self.seq_len + 1
        elif self.objective == "mlm":
            self.window = self.seq_len
        else:
            self.window = objectives.span_corruption_window(self.seq_len, self.density, self.mean_span)
        for split, ids in (("training", self.train_ids), ("validation", self.eval_ids)):
            if len(ids) < self.window:
                raise DataError(
                    f"the {split} split of the corpus has {len(ids)} tokens, fewer than one context window of "
                    f"{self.window}; lower config.data.seq_len or use a longer corpus"
                )
        self.fixed_cut = cut_tokens(float(d.cut_fraction), self.seq_len)
        self.eval_cuts = {fraction: cut_tokens(fraction, self.seq_len) for fraction in d.eval_cuts}

    @property
    def _any_cut(self) -> bool:
        """Rows must hold a window cut anywhere (random cuts in training, or scores at several cuts)."""
        return self.random_cut or bool(self.eval_cuts)

    @property
    def encoder_len(self) -> int:
        if self.objective != "lm":
            return self.seq_len
        return self.seq_len if self._any_cut else self.fixed_cut

    @property
    def decoder_len(self) -> int:
        if self.arch != "encoder_decoder" or self.objective != "lm":
            return self.seq_len
        return self.seq_len if self._any_cut else self.window - self.fixed_cut

    @property
    def max_len(self) -> int:
        return max(self.decoder_len, self.encoder_len if self.arch == "encoder_decoder" else 0)

    @property
    def _full_rows(self) -> bool:
        """Rows without padding need no segment ids (causal attention then needs no mask tensor)."""
        if self.objective == "lm":
            return self.arch != "encoder_decoder" or not self._any_cut
        return self.objective == "mlm"

    def _rows(self, windows: np.ndarray, cuts: np.ndarray, rng: np.random.Generator, loss: str | None = None) -> Batch:
        if self.objective == "mlm":
            return objectives.mlm_batch(windows, self.tokenizer, self.mask_rate, rng)
        if self.objective == "lm":
            examples = objectives.window_examples(windows, cuts)
        else:
            examples = [
                objectives.span_corruption(w, self.tokenizer, self.density, self.mean_span, rng) for w in windows
            ]
        return objectives.convert(
            examples,
            self.arch,
            self.tokenizer,
            len(windows),
            self.decoder_len,
            self.encoder_len,
            loss or self.loss,
            with_segment_ids=not self._full_rows,
            target_positions=self.target_positions,
        )

    def _train_batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.train_ids) - self.window + 1, size=self.batch_size)
        windows = self.train_ids[starts[:, None] + np.arange(self.window)[None]]
        if self.random_cut:
            cuts = rng.integers(1, self.seq_len + 1, size=self.batch_size)
        else:
            cuts = np.full(self.batch_size, self.fixed_cut)
        if self.full_lm_share:
            cuts = np.where(rng.random(self.batch_size) < self.full_lm_share, 1, cuts)
        return self._rows(windows, cuts, rng)

    def train_iterator(self, state: dict | None = None) -> StepIterator:
        return StepIterator(self._train_batch, state)

    @property
    def eval_splits(self) -> EvalSplits:
        splits = {"validation": self._eval_batches}
        if self.objective == "lm":
            # Wang et al. 2022's comparison: the continuation given the first part,
            # scored the same way for every architecture (for all but a full-LM
            # decoder-only run it is the validation split itself).
            splits["continuation"] = lambda: self._eval_batches(loss="continuation")
            # Continuations scored after prefixes of several lengths (data.eval_cuts), named by the prefix's tokens.
            for cut in self.eval_cuts.values():
                splits[f"continuation_cut_{cut}"] = lambda cut=cut: self._eval_batches("continuation", cut)
        return splits

    def _eval_batches(self, loss: str | None = None, cut: int | None = None) -> Iterator[Batch]:
        """Full-LM and masked-LM windows tile the split so every token is scored once (the last window padded);
        cut-LM and span corruption score non-overlapping whole windows."""
        ids = self.eval_ids
        loss = loss or self.loss
        every_token = self.objective == "mlm" or (self.objective == "lm" and loss == "all")
        # A full-LM window of W tokens scores W - 1 targets: consecutive windows share one token.
        stride = self.window - 1 if self.objective == "lm" and every_token else self.window
        last_start = len(ids) - (self.window - stride) if every_token else len(ids) - self.window + 1
        starts = np.arange(0, last_start, stride)
        rng = np.random.default_rng([self.seed, 2**31 - 1])  # fixed corruption
        for first in range(0, len(starts), self.eval_batch_size):
            chunk = starts[first : first + self.eval_batch_size]
            windows = np.full((self.eval_batch_size, self.window), self.tokenizer.pad_id, np.int32)
            valid = np.zeros((self.eval_batch_size, self.window), bool)
            for row, start in enumerate(chunk):
                piece = ids[start : start + self.window]
                windows[row, : len(piece)] = piece
                valid[row, : len(piece)] = True
            # Padding rows are cut like the others; their loss is zeroed below.
            cuts = np.full(self.eval_batch_size, self.fixed_cut if cut is None else cut)
            batch = self._rows(windows, cuts, rng, loss)
            yield self._mask_padding(batch, valid)

    def _mask_padding(self, batch: Batch, valid_BxW: np.ndarray) -> Batch:
        """Zero the loss and segment ids of padded positions and rows."""
        rows_valid = valid_BxW.all(axis=1, keepdims=True)
        if self.arch == "encoder_decoder" or self.objective == "span_corruption":
            seg = batch.get("segment_ids", np.ones_like(batch["input_tokens"]))
            batch["segment_ids"] = (seg * rows_valid).astype(np.int32)
            if "encoder_segment_ids" in batch:
                batch["encoder_segment_ids"] = (batch["encoder_segment_ids"] * rows_valid).astype(np.int32)
        else:
            # Position i reads token i and predicts token i+1 (lm) or token i (mlm).
            read_ok = valid_BxW[:, : batch["input_tokens"].shape[1]]
            target_ok = valid_BxW[:, 1:] if self.objective == "lm" else read_ok
            batch["segment_ids"] = read_ok.astype(np.int32)
            batch["loss_weights"] = batch["loss_weights"] * target_ok
        batch["loss_weights"] = batch["loss_weights"] * (batch["segment_ids"] > 0)
        return batch


class PairedDataset:
    """Sequence-to-sequence on aligned pairs: ``source <sep>`` as the prefix, ``target <eos>`` as the continuation.

    Examples longer than ``seq_len`` for *any* architecture are dropped for all
    of them, so every architecture trains and is evaluated on the same pairs.
    """

    vector_dim = 0

    def __init__(self, config, splits: dict[str, list[tuple[str, str]]], tokenizer: Tokenizer, loss: str):
        d = config.data
        self.loss, self.target_positions = loss, d.target_positions
        self.arch, self.seed = config.model.arch, config.seed
        self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
        self.seq_len = int(d.seq_len)
        self.pack = bool(d.pack)
        self.tokenizer = tokenizer
        self.examples: dict[str, list[Example]] = {}
        for split, pairs in splits.items():
            examples = [
                objectives.seq2seq_example(tokenizer.encode(s), tokenizer.encode(t), tokenizer) for s, t in pairs
            ]
            kept = [ex for ex in examples if ex.length("encoder_only") <= self.seq_len]
            if len(kept) < len(examples):
                log.warning(
                    "%s: dropped %d of %d pairs longer than seq_len=%d",
                    split,
                    len(examples) - len(kept),
                    len(examples),
                    self.seq_len,
                )
            if not kept:
                raise DataError(f"no {split} pair fits in config.data.seq_len={self.seq_len}; raise it")
            self.examples[split] = kept
        self.max_len = self.seq_len

    def _builder(self, rows: int, pack: bool) -> Callable[[], RowBuilder]:
        return lambda: RowBuilder(
            self.arch, self.tokenizer, rows, self.seq_len, self.seq_len, self.loss, pack, self.target_positions
        )

    def train_iterator(self, state: dict | None = None) -> EpochIterator:
        return EpochIterator(self.examples["train"], self._builder(self.batch_size, self.pack), self.seed, state)

    @property
    def eval_splits(self) -> EvalSplits:
        # Evaluation scores the targets only, whatever the training loss (Liu et al.'s target perplexity).
        builder = lambda: RowBuilder(  # noqa: E731
            self.arch,
            self.tokenizer,
            self.eval_batch_size,
            self.seq_len,
            self.seq_len,
            "continuation",
            False,
            self.target_positions,
        )
        return {
            split: (lambda exs=exs: _eval_batches(exs, builder))
            for split, exs in self.examples.items()
            if split != "train"
        }


class FactsDataset(PairedDataset):
    """Reversal curse (Berglund et al. 2023; Wu et al. 2024): learn "NAME is ATTR." and answer both ways.

    Training rows hold the statements (causal LM loss on every token for
    decoder-only, masking of ``mask_rate`` of the tokens for encoder-only);
    with ``data.facts.directions = "both"`` (the control) also every
    statement reversed, "ATTR is NAME.".  Evaluation asks every fact forward
    (split ``validation``: ``NAME is`` -> ``ATTR``) and in reverse (split
    ``reverse``): a causal model completes ``ATTR is`` -> ``NAME``, a masked
    LM fills ``[mask]... is ATTR.``.  :meth:`ranking_questions` asks the same
    questions as a choice among every fact's answer (Berglund et al.'s
    likelihood comparison).
    """

    def __init__(self, config, facts: list[tuple[str, str]], tokenizer: Tokenizer):
        d = config.data
        self.arch, self.seed = config.model.arch, config.seed
        self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
        self.seq_len, self.pack, self.tokenizer, self.loss = int(d.seq_len), True, tokenizer, "continuation"
        self.target_positions = d.target_positions
        self.mask_rate = float(d.mask_rate)
        enc = tokenizer.encode
        is_, dot = enc(" is "), enc(".")
        self.names, self.attributes = [enc(n) for n, _ in facts], [enc(a) for _, a in facts]
        self.is_, self.dot = is_, dot
        self.statements = [np.concatenate([n, is_, a, dot]) for n, a in zip(self.names, self.attributes, strict=True)]
        if d.facts.directions == "both":
            self.statements += [
                np.concatenate([a, is_, n, dot]) for n, a in zip(self.names, self.attributes, strict=True)
            ]
        self.examples = {
            split: [self._question(split, i, i) for i in range(len(facts))] for split in ("validation", "reverse")
        }
        longest = max(len(s) for s in self.statements)
        if longest > self.seq_len:
            raise DataError(f"facts need config.data.seq_len >= {longest}, got {self.seq_len}")
        self.max_len = self.seq_len

    def _question(self, split: str, fact: int, answer: int) -> Example:
        """Fact ``fact`` asked forward (``validation``) or in reverse, with fact ``answer``'s answer as the target."""
        name, attr = self.names[fact], self.attributes[fact]
        if self.arch != "encoder_only":
            if split == "validation":
                return Example(np.concatenate([name, self.is_]), np.concatenate([self.attributes[answer], self.dot]))
            return Example(np.concatenate([attr, self.is_]), np.concatenate([self.names[answer], self.dot]))
        # A masked LM reads the statement with the asked part masked (it holds the candidate answer as its target).
        if split == "validation":
            tokens = np.concatenate([name, self.is_, self.attributes[answer], self.dot])
            hidden = np.zeros(len(tokens), bool)
            hidden[len(name) + len(self.is_) : len(tokens) - len(self.dot)] = True
        else:
            tokens = np.concatenate([self.names[answer], self.is_, attr, self.dot])
            hidden = np.zeros(len(tokens), bool)
            hidden[: len(self.names[answer])] = True
        return Example(tokens[:0], tokens[:0], masked_view=(tokens, hidden))

    def ranking_questions(self, split: str) -> Iterator[tuple[Batch, int]]:
        """Every question of ``split`` with every fact's answer as a candidate: ``(batch, right row)`` per question.

        Row ``j`` of a question's batch holds candidate answer ``j``; scoring
        each row's log-likelihood of its target ranks the right answer among
        all of them.
        """
        n = len(self.names)
        for fact in range(n):
            rows = [self._question(split, fact, answer) for answer in range(n)]
            yield objectives.convert(rows, self.arch, self.tokenizer, n, self.seq_len), fact

    def _train_batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        chosen = rng.integers(0, len(self.statements), size=self.batch_size)
        if self.arch == "encoder_only":
            examples = []
            for i in chosen:
                s = self.statements[i]
                hidden = rng.random(len(s)) < self.mask_rate
                hidden[rng.integers(len(s))] = True
                examples.append(Example(s[:0], s[:0], masked_view=(s, hidden)))
            loss = "continuation"
        else:
            # The whole statement is the target: a cut after the first token, loss on everything.
            examples = [Example(self.statements[i][:1], self.statements[i][1:]) for i in chosen]
            loss = "all" if self.arch == "decoder_only" else "continuation"
        return objectives.convert(examples, self.arch, self.tokenizer, self.batch_size, self.seq_len, loss=loss)

    def train_iterator(self, state: dict | None = None) -> StepIterator:
        return StepIterator(self._train_batch, state)


class RegressionDataset:
    """In-context linear regression in Ding et al.'s (2023) layout: predict ``w.x`` of every query.

    A row is one sequence: its ``k`` context pairs ``z_i = (x_i, y_i)``, then
    its ``q`` queries ``(x_j, 0)``, with squared-error loss on every query's
    ``y``.  The prefix-LM sees the context both ways, the causal LM left to
    right; the encoder-decoder encodes the context and decodes the queries.
    Queries attend to the context and to earlier queries (which carry ``x``
    only, independent of ``w``); Ding et al. keep queries independent.
    """

    def __init__(self, config, splits: dict[str, tuple[np.ndarray, np.ndarray]], tokenizer: Tokenizer):
        icl = config.data.icl
        self.arch, self.seed = config.model.arch, config.seed
        self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
        self.k, self.q = int(icl.num_examples), int(icl.num_queries)
        self.tokenizer = tokenizer
        self.splits = splits
        self.vector_dim = splits["train"][0].shape[-1] + 1
        self.max_len = self.k + self.q

    def _rows(self, x: np.ndarray, y: np.ndarray, seq: np.ndarray, valid: np.ndarray) -> Batch:
        """Rows ``[B, k + q]`` (encoder-decoder: ``[B, k]`` encoder, ``[B, q]`` decoder) of sequences ``seq``."""
        B, k, q = len(seq), self.k, self.q
        context = np.concatenate([x[seq, :k], y[seq, :k, None]], axis=-1)  # [B, k, d+1]
        queries = np.concatenate([x[seq, k:], np.zeros((B, q, 1), np.float32)], axis=-1)  # [B, q, d+1]
        targets = y[seq, k:]  # [B, q]
        rows_valid = valid[:, None].astype(np.int32)

        def arange(n: int) -> np.ndarray:
            return np.broadcast_to(np.arange(n, dtype=np.int32), (B, n)).copy()

        if self.arch == "encoder_decoder":
            return {
                "encoder_input_vectors": context.astype(np.float32),
                "encoder_input_tokens": np.zeros((B, k), np.int32),
                "encoder_positions": arange(k),
                "encoder_segment_ids": np.repeat(rows_valid, k, axis=1),
                "input_vectors": queries.astype(np.float32),
                "input_tokens": np.zeros((B, q), np.int32),
                "target_tokens": np.zeros((B, q), np.int32),
                "target_values": targets.astype(np.float32),
                "loss_weights": np.repeat(rows_valid, q, axis=1).astype(np.float32),
                "positions": arange(q),
                "segment_ids": np.repeat(rows_valid, q, axis=1),
            }
        L = k + q
        weights = np.zeros((B, L), np.float32)
        weights[:, k:] = valid[:, None]
        values = np.zeros((B, L), np.float32)
        values[:, k:] = targets
        out = {
            "input_vectors": np.concatenate([context, queries], axis=1).astype(np.float32),
            "input_tokens": np.zeros((B, L), np.int32),
            "target_tokens": np.zeros((B, L), np.int32),
            "target_values": values,
            "loss_weights": weights,
            "positions": arange(L),
            "segment_ids": np.repeat(rows_valid, L, axis=1),
        }
        if self.arch == "prefix_lm":
            out["bidirectional"] = (np.arange(L)[None] < k).astype(np.int32).repeat(B, axis=0)
        return out

    def _train_batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        x, y = self.splits["train"]
        seq = rng.integers(0, len(x), size=self.batch_size)
        return self._rows(x, y, seq, np.ones(self.batch_size, bool))

    def train_iterator(self, state: dict | None = None) -> StepIterator:
        return StepIterator(self._train_batch, state)

    def _eval_batches(self, split: str) -> Iterator[Batch]:
        x, y = self.splits[split]
        for first in range(0, len(x), self.eval_batch_size):
            seq = np.arange(first, first + self.eval_batch_size)
            valid = seq < len(x)
            yield self._rows(x, y, np.where(valid, seq, 0), valid)

    @property
    def eval_splits(self) -> EvalSplits:
        return {split: (lambda s=split: self._eval_batches(s)) for split in self.splits if split != "train"}
