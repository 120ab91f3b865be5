"""Evaluate a run: ``python -m gpt2_jax.evaluate --workdir=DIR [--split=test --beam_size=4]``.

Sequence-to-sequence runs decode every source of the split and score the
outputs against the references (BLEU and chrF through sacrebleu, with their
signatures, and exact match); language-model runs report teacher-forced loss,
token accuracy, perplexity and bits per token (bits per character/byte for
character/byte tokenizers).  Predictions and scores go into
``DIR/eval_<split>/``.  The run's flags (``--mesh``, ``--distributed``):
:mod:`gpt2_jax.run_flags`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import jax
from absl import app, flags

from gpt2_jax import files, run_flags, runs, scores
from gpt2_jax.data import PAIRED_DATASETS, paired_splits, paths
from gpt2_jax.errors import UserError
from gpt2_jax.experiment import Experiment
from gpt2_jax.generation import complete

_SPLIT = flags.DEFINE_string("split", "validation", "Split to evaluate (validation, test, test_ood, ...).")
_BEAM = flags.DEFINE_integer("beam_size", 0, "Beam search width (0 = greedy).")
_ALPHA = flags.DEFINE_float("alpha", 0.6, "Beam search length penalty.")
_MAX_NEW = flags.DEFINE_integer(
    "max_new_tokens", None, "Longest output (default: as long as the positions after a source allow)."
)
_BATCH = flags.DEFINE_integer("batch_size", 64, "Sources decoded together.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Evaluate only the first N examples (0 = all).")


def decode_split(
    run: runs.Run,
    split: str,
    beam_size: int = 0,
    alpha: float = 0.6,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    limit: int = 0,
) -> dict:
    """Decode every source of a paired split; write predictions and scores; return the scores."""
    pairs = paired_splits(run.config, paths.cache_dir(run.config.data.cache_dir))
    if split not in pairs:
        raise UserError(f"split {split!r} not found; this run's data has {', '.join(pairs)}")
    name = f"{split}_beam{beam_size}" if beam_size else split  # greedy and beam results side by side
    _output_dir(run, name)  # fail now, not after decoding everything
    examples = pairs[split][:limit] if limit else pairs[split]
    hypotheses = []
    for start in range(0, len(examples), batch_size):
        sources = [s for s, _ in examples[start : start + batch_size]]
        hypotheses += complete(run, sources, max_new_tokens, beam_size=beam_size, alpha=alpha, rows=batch_size)
    references = [t for _, t in examples]
    result = {
        "split": split,
        "step": run.step,
        "examples": len(examples),
        "decoding": f"beam {beam_size}, alpha {alpha}" if beam_size else "greedy",
        **scores.bleu(hypotheses, references),
        **scores.chrf(hypotheses, references),
        "exact_match": scores.exact_match(hypotheses, references),
    }
    predictions = [
        {"source": source, "reference": reference, "hypothesis": hypothesis}
        for (source, reference), hypothesis in zip(examples, hypotheses, strict=True)
    ]
    _write(run, name, result, predictions)
    return result


def language_model_scores(run: runs.Run, split: str) -> dict:
    """Teacher-forced loss of a split, as perplexity and bits."""

    _output_dir(run, split)  # fail now, not after evaluating
    exp = Experiment(run.config, mesh=run.mesh)
    if split not in exp.data.eval_splits:
        raise UserError(f"split {split!r} not found; this run's data has {', '.join(exp.data.eval_splits)}")
    metrics = exp.evaluate(run.params, split)
    result = {"split": split, "step": run.step, **metrics, "perplexity": scores.perplexity(metrics["loss"])}
    result["bits_per_token"] = metrics["loss"] / math.log(2)
    if run.tokenizer.name in ("char", "byte"):
        result[f"bits_per_{run.tokenizer.name}"] = result["bits_per_token"]
    _write(run, split, result)
    return result


def _output_dir(run: runs.Run, name: str) -> Path:
    """``DIR/eval_<name>/`` (a split, ``_beam<K>`` added for beam search), created and checked writable."""
    out = Path(run.workdir) / f"eval_{name}"
    if jax.process_index() == 0:
        files.ensure_writable_dir(out, "the evaluation's output directory")
    return out


def _write(run: runs.Run, name: str, result: dict, predictions: list[dict] | None = None) -> None:
    """``scores.json`` (and ``predictions.jsonl``) into ``DIR/eval_<name>/``, by process 0 only on several hosts."""
    if jax.process_index() > 0:
        return
    out = _output_dir(run, name)
    if predictions is not None:
        files.write_text(out / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in predictions))
    files.write_json(out / "scores.json", result)


def main(argv: list[str]) -> None:
    del argv
    try:
        run = run_flags.load_run()
        if run.config.data.dataset in PAIRED_DATASETS:
            result = decode_split(
                run, _SPLIT.value, _BEAM.value, _ALPHA.value, _MAX_NEW.value, _BATCH.value, _LIMIT.value
            )
        else:
            result = language_model_scores(run, _SPLIT.value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if jax.process_index() == 0:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
