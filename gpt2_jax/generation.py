"""Text in, text out: decode prompts (or sources) with a loaded run."""

from __future__ import annotations

import jax
import numpy as np

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


def decode_inputs(run: Run, texts: list[str], max_new_tokens: int, rows: int = 0) -> tuple[dict[str, np.ndarray], int]:
    """Token inputs for decoding ``texts`` with ``run``, and how many tokens fit after the longest prompt.

    Sources get the separator that training put after them.  ``rows`` pads
    the batch with copies of the first text (their outputs are dropped), so
    that every batch of an evaluation has the same shape.  Padding a prompt
    to a shared width never takes room from the new tokens.
    """
    tok, max_len = run.tokenizer, run.model.cfg.max_len
    paired = run.config.data.dataset in PAIRED_DATASETS
    ids = [np.concatenate([tok.encode(t), [tok.sep_id]]) if paired else tok.encode(t) for t in texts]
    ids += [ids[0]] * max(0, rows - len(ids))
    if run.arch == "encoder_decoder":
        return decoding.encoder_inputs(ids, tok.pad_id, tok.bos_id, BUCKET), min(max_new_tokens, max_len)
    if run.arch not in ("decoder_only", "prefix_lm"):
        raise UserError(f"a {run.arch!r} run does not generate text left to right")
    if any(len(i) == 0 for i in ids):
        raise UserError("a prompt is empty: give at least one character (the default prompt is a newline)")
    longest = max(len(i) for i in ids)
    room = max_len - longest
    if room < 1:
        raise UserError(f"the prompt is {longest} tokens long and the model has {max_len} positions; shorten it")
    n = min(max_new_tokens, room)
    return decoding.pad_prompts(ids, tok.pad_id, BUCKET, max_width=max_len - n), n


def complete(
    run: Run,
    texts: list[str],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    beam_size: int = 0,
    alpha: float = 0.6,
    seed: int = 0,
    rows: int = 0,
) -> list[str]:
    """Continue (or translate) every text; returns the generated text without the stop token.

    Decoding runs on the run's mesh (see :mod:`gpt2_jax.runs`): rows split
    over its batch axes when they divide, heads over ``tensor``.
    """
    check_decoding_args(run, max_new_tokens, temperature, top_k, top_p, beam_size)
    inputs, n = decode_inputs(run, texts, max_new_tokens, rows)
    eos = run.tokenizer.eos_id
    inputs = sharding.place_rows(inputs, run.mesh)
    if beam_size:
        search = sharding.traced_on(run.mesh, decoding.beam_search)
        tokens, lengths = search(
            run.params, inputs, model=run.model, max_new_tokens=n, eos_id=eos, beam_size=beam_size, alpha=alpha
        )
    else:
        generate = sharding.traced_on(run.mesh, decoding.generate)
        tokens, lengths = generate(
            run.params,
            inputs,
            jax.random.PRNGKey(seed),
            model=run.model,
            max_new_tokens=n,
            eos_id=eos,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
    tokens, lengths = sharding.to_host(tokens), sharding.to_host(lengths)
    out = []
    for row, length in zip(tokens[: len(texts)], lengths[: len(texts)], strict=True):
        ids = row[:length]
        ids = ids[:-1] if length and ids[-1] == eos else ids
        out.append(run.tokenizer.decode(ids))
    return out
