"""Text in, text out: decode prompts (or sources) with a loaded run."""

from __future__ import annotations

import jax
import numpy as np

from gpt2_jax import decoding, sharding
from gpt2_jax.data import PAIRED_DATASETS
from gpt2_jax.errors import UserError
from gpt2_jax.runs import Run

BUCKET = 16  # prompt widths are rounded up to a multiple of this (fewer recompilations)


def decode_inputs(run: Run, texts: list[str], rows: int = 0) -> dict[str, np.ndarray]:
    """Token inputs for decoding ``texts`` with ``run``: sources get the separator that training put after them.

    ``rows`` pads the batch with copies of the first text (their outputs are
    dropped), so that every batch of an evaluation has the same shape.
    """
    tok = run.tokenizer
    paired = run.config.data.dataset in PAIRED_DATASETS
    ids = [np.concatenate([tok.encode(t), [tok.sep_id]]) if paired else tok.encode(t) for t in texts]
    ids += [ids[0]] * max(0, rows - len(ids))
    if run.arch == "encoder_decoder":
        return decoding.encoder_inputs(ids, tok.pad_id, tok.bos_id, BUCKET)
    if run.arch not in ("decoder_only", "prefix_lm"):
        raise UserError(f"a {run.arch!r} run does not generate text left to right")
    return decoding.pad_prompts(ids, tok.pad_id, BUCKET)


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
    inputs = decode_inputs(run, texts, rows)
    width = 0 if run.arch == "encoder_decoder" else inputs["prompt_tokens"].shape[1]
    n = min(max_new_tokens, run.model.cfg.max_len - width)
    if n < 1:
        raise UserError(f"the prompt fills all {run.model.cfg.max_len} positions of the model; shorten it")
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
