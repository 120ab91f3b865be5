"""Text in, text out: decode prompts (or sources) with a loaded run."""

from __future__ import annotations

import functools

import jax
import numpy as np
from absl import logging

from gpt2_jax import decoding, sharding
from gpt2_jax.data import PAIRED_DATASETS
from gpt2_jax.errors import UserError
from gpt2_jax.runs import Run

BUCKET = 16  # prompt widths are rounded up to a multiple of this (fewer recompilations)


def check_decoding_args(
    run: Run, max_new_tokens: int, temperature: float, top_k: int, top_p: float, beam_size: int
) -> None:
    """One-line errors for decoding settings that would silently decode something else."""
    vocab = run.tokenizer.vocab_size
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens={max_new_tokens}: generate at least 1 token")
    if temperature < 0:
        raise UserError(f"temperature={temperature}: must be >= 0 (0 = greedy)")
    if top_k < 0:
        raise UserError(f"top_k={top_k}: must be >= 0 (0 = all tokens)")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p={top_p}: must be in (0, 1] (1 = all tokens)")
    if not 0 <= beam_size <= vocab:
        raise UserError(f"beam_size={beam_size}: must be between 1 and the vocabulary's {vocab} tokens (0 = no beam)")


def _prompt_ids(run: Run, texts: list[str], rows: int) -> list[np.ndarray]:
    """Token ids of every text (sources with training's separator), padded to ``rows`` with copies of the first."""
    tok = run.tokenizer
    paired = run.config.data.dataset in PAIRED_DATASETS
    ids = [np.concatenate([tok.encode(t), [tok.sep_id]]) if paired else np.asarray(tok.encode(t)) for t in texts]
    if any(len(i) == 0 for i in ids):
        raise UserError("a prompt is empty: give at least one character (the default prompt is a newline)")
    return ids + [ids[0]] * max(0, rows - len(ids))


def _window_inputs(run: Run, ids: list[np.ndarray], max_new_tokens: int) -> tuple[dict[str, np.ndarray], int]:
    """Decoder inputs of prompts that fit the window, and how many new tokens fit after the longest (at most
    ``max_new_tokens``).  Padding a prompt to a shared width never takes room from the new tokens."""
    max_len = run.model.cfg.max_len
    if run.arch == "encoder_decoder":
        return decoding.encoder_inputs(ids, run.tokenizer.pad_id, run.tokenizer.bos_id, BUCKET), min(
            max_new_tokens, max_len
        )
    longest = max(len(i) for i in ids)
    n = min(max_new_tokens, max_len - longest)
    return decoding.pad_prompts(ids, run.tokenizer.pad_id, BUCKET, max_width=max_len - n), n


def _decode(
    run: Run, inputs: dict[str, np.ndarray], n: int, *, beam_size: int, alpha: float, sampling: dict, key
) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [B, n], lengths [B])`` of one decoding call on the run's mesh."""
    eos = run.tokenizer.eos_id
    inputs = sharding.place_rows(inputs, run.mesh)
    if beam_size:
        search = sharding.traced_on(run.mesh, decoding.beam_search)
        out = search(
            run.params, inputs, model=run.model, max_new_tokens=n, eos_id=eos, beam_size=beam_size, alpha=alpha
        )
    else:
        generate = sharding.traced_on(run.mesh, decoding.generate)
        out = generate(run.params, inputs, key, model=run.model, max_new_tokens=n, eos_id=eos, **sampling)
    return sharding.to_host(out[0]), sharding.to_host(out[1])


def complete(
    run: Run,
    texts: list[str],
    max_new_tokens: int | None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    beam_size: int = 0,
    alpha: float = 0.6,
    seed: int = 0,
    rows: int = 0,
) -> list[str]:
    """Continue (or translate) every text; returns the generated text without the stop token.

    Text runs generate past their window (greedy and sampling): once the
    context is full, the last half of it is prefilled again (re-encoded by an
    encoder-decoder, a new bidirectional prefix for a prefix-LM) and
    generation goes on, as nanoGPT crops its context.  A prompt longer than
    the window is read from its last positions, with a warning.  Beam search
    and sequence-to-sequence runs decode within one window: a
    sequence-to-sequence output ends at the decoder's positions
    (``max_new_tokens=None``: as long as they allow), and asking beam search
    for more than fits is an error.  Decoding runs on the run's mesh (see
    :mod:`gpt2_jax.runs`): rows split over its batch axes when they divide,
    heads over ``tensor``.
    """
    check_decoding_args(run, 1 if max_new_tokens is None else max_new_tokens, temperature, top_k, top_p, beam_size)
    if run.arch not in ("decoder_only", "prefix_lm", "encoder_decoder"):
        raise UserError(f"a {run.arch!r} run does not generate text left to right")
    ids = _prompt_ids(run, texts, rows)
    decode = functools.partial(
        _decode,
        run,
        beam_size=beam_size,
        alpha=alpha,
        sampling={"temperature": temperature, "top_k": top_k, "top_p": top_p},
    )
    if run.config.data.dataset in PAIRED_DATASETS:
        outputs = _within_one_window(run, ids, max_new_tokens, decode, jax.random.PRNGKey(seed))
    else:
        outputs = _sliding_window(run, ids, max_new_tokens, beam_size, decode, jax.random.PRNGKey(seed))
    eos = run.tokenizer.eos_id
    return [run.tokenizer.decode(out[:-1] if out and out[-1] == eos else out) for out in outputs[: len(texts)]]


def _within_one_window(run: Run, ids: list[np.ndarray], max_new_tokens: int | None, decode, key) -> list[list[int]]:
    """Outputs of sequence-to-sequence sources, which end at the positions the window has after them."""
    max_len = run.model.cfg.max_len
    longest = max(len(i) for i in ids)
    if longest > max_len or (run.arch != "encoder_decoder" and longest >= max_len):
        raise UserError(f"a source is {longest} tokens long and the model has {max_len} positions; shorten it")
    room = max_len if run.arch == "encoder_decoder" else max_len - longest
    if max_new_tokens is not None and max_new_tokens > room:
        logging.warning("outputs end at %d tokens, the positions this run has after its sources", room)
    inputs, n = _window_inputs(run, ids, min(max_new_tokens or room, room))
    tokens, lengths = decode(inputs, n, key=key)
    return [[int(t) for t in row[:length]] for row, length in zip(tokens, lengths, strict=True)]


def _sliding_window(
    run: Run, ids: list[np.ndarray], max_new_tokens: int | None, beam_size: int, decode, key
) -> list[list[int]]:
    """Continuations of text prompts, the window sliding by half its positions whenever it is full."""
    if max_new_tokens is None:
        raise UserError("a language-model run needs max_new_tokens: it can generate past its window")
    max_len, eos = run.model.cfg.max_len, run.tokenizer.eos_id
    # A window holds at most max_len - 1 context tokens (decoder) or max_len source tokens (encoder).
    context_cap = max_len if run.arch == "encoder_decoder" else max_len - 1
    longest = max(len(i) for i in ids)
    if longest > context_cap:
        logging.warning("a prompt is %d tokens long; the model reads its last %d (its window)", longest, context_cap)
    if beam_size:
        room = max_len if run.arch == "encoder_decoder" else max_len - min(longest, context_cap)
        if max_new_tokens > room:
            raise UserError(
                f"beam search decodes within one window: at most {room} new tokens after this prompt, not "
                f"{max_new_tokens}; lower max_new_tokens, or decode greedily or by sampling, which slide the window"
            )
    contexts, outputs = [list(i) for i in ids], [[] for _ in ids]
    done = np.zeros(len(ids), bool)
    remaining, cap, keep = max_new_tokens, context_cap, max(1, max_len // 2)
    while remaining > 0 and not done.all():
        inputs, n = _window_inputs(run, [np.asarray(c[-cap:]) for c in contexts], remaining)
        key, sub = jax.random.split(key)
        tokens, lengths = decode(inputs, n, key=sub)
        for i in np.flatnonzero(~done):
            new = [int(t) for t in tokens[i, : lengths[i]]]
            contexts[i] += new
            outputs[i] += new
            done[i] = eos in new
        remaining, cap = remaining - n, keep  # from here on the window slides
    return outputs
