"""Data: corpora, tokenizers and objectives that produce the batch schema.

:func:`build` returns a dataset object with

* ``tokenizer``: the run's tokenizer;
* ``train_batch(step)``: the global training batch of an optimizer step,
  a pure function of ``(seed, step)``;
* ``eval_batches()``: the whole validation split in fixed-shape batches;
* ``max_len``: the number of positions any stack needs;
* ``state(next_step)``: the iterator position saved with checkpoints.
"""

from __future__ import annotations

from gpt2_jax.data.text import TextLM


def build(config) -> TextLM:
    """The dataset a run config asks for."""
    return TextLM(
        config.data,
        arch=config.model.arch,
        seed=config.seed,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
    )
