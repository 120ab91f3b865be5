"""Evaluation metrics: BLEU and chrF (sacrebleu, with their signatures), exact match, bits per character."""

from __future__ import annotations

import math
from collections.abc import Sequence


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float | str]:
    """Corpus BLEU of detokenized text (sacrebleu's default 13a tokenisation) and its signature."""
    import sacrebleu

    metric = sacrebleu.BLEU()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return {"bleu": result.score, "bleu_signature": str(metric.get_signature())}


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float | str]:
    """Corpus chrF and its signature."""
    import sacrebleu

    metric = sacrebleu.CHRF()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return {"chrf": result.score, "chrf_signature": str(metric.get_signature())}


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Share of outputs identical to their reference (after stripping surrounding spaces)."""
    pairs = list(zip(hypotheses, references, strict=True))
    return sum(h.strip() == r.strip() for h, r in pairs) / max(len(pairs), 1)


def bits_per_unit(loss_nats_per_token: float, tokens: float, units: float) -> float:
    """Bits per character (or byte): total nats over the units the tokens cover, in bits."""
    return loss_nats_per_token * tokens / units / math.log(2)


def perplexity(loss_nats_per_token: float) -> float:
    return math.exp(loss_nats_per_token)
