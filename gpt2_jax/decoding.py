"""Incremental decoding with a key/value cache, for every generative architecture.

* decoder-only and prefix-LM: the prompt is prefilled in one pass (for the
  prefix-LM it is the bidirectional prefix, so nothing is recomputed later),
  then one token per step runs against the cache inside ``lax.while_loop``.
* encoder-decoder: the source is encoded once, every decoder layer's
  cross-attention keys/values are computed once, and the decoder runs one
  token per step from ``<bos>`` with its own self-attention cache.

Prompts of different lengths share a batch: they are right-padded, each row
writes its next token at its own position, and masks hide the rest.

Strategies: greedy (``temperature=0``), sampling with temperature, top-k and
top-p (nucleus); generation stops at ``eos_id`` or ``max_new_tokens``.
:func:`beam_search` adds Wu et al. (2016)'s length penalty.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax import masks
from gpt2_jax.model import Transformer, TransformerConfig

Array = jnp.ndarray
NEG_INF = -1e30


def init_cache(cfg: TransformerConfig, batch_size: int, max_len: int) -> list[dict[str, Array]]:
    """Zero key/value caches ``[B, max_len, N, H]`` for every decoder layer."""
    shape = (batch_size, max_len, cfg.num_heads, cfg.head_dim)
    dtype = cfg.compute_dtype
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.num_layers)]


def filter_logits(logits_BxV: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Set logits outside the top-k and the top-p (nucleus) set to -inf."""
    if top_k > 0:
        kth = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth, NEG_INF, logits_BxV)
    if top_p < 1.0:
        order = jnp.argsort(-logits_BxV, axis=-1)
        sorted_logits = jnp.take_along_axis(logits_BxV, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep a token if the probability mass *before* it is below p: the
        # smallest set whose mass reaches p (always at least the top token).
        keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits_BxV.shape[0])[:, None], order].set(keep_sorted)
        logits_BxV = jnp.where(keep, logits_BxV, NEG_INF)
    return logits_BxV


def choose(logits_BxV: Array, key: Array, temperature: float, top_k: int, top_p: float) -> Array:
    """The next token of every row: argmax when ``temperature == 0``, else a filtered sample."""
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = filter_logits(logits_BxV / temperature, top_k, top_p)
    return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


def _step_mask(pos_B: Array, max_len: int) -> Array:
    """``[B, 1, 1, L_max]``: a new token at ``pos`` sees cache positions ``<= pos``."""
    return (jnp.arange(max_len)[None, :] <= pos_B[:, None])[:, None, None, :]


def _prefill_mask(arch: str, prompt_len_B: Array, prompt_width: int, max_len: int) -> Array:
    """``[B, 1, P, L_max]``: the prompt's own attention (causal, or bidirectional prefix for prefix-LM)."""
    valid = (jnp.arange(prompt_width)[None, :] < prompt_len_B[:, None]).astype(jnp.int32)
    if arch == "prefix_lm":
        within = masks.prefix_mask(valid)
    else:
        within = masks.causal_mask(prompt_width)
    within = jnp.logical_and(within, masks.padding_mask(jnp.ones_like(valid), valid))
    return jnp.pad(within, ((0, 0), (0, 0), (0, 0), (0, max_len - prompt_width)))


class CachedModel:
    """A model run against its key/value cache: prefill (or encode) once, then one step per token.

    Shared by sampling and beam search.
    """

    def __init__(self, model: Transformer):
        self.model = model
        self.cfg = model.cfg
        self.max_len = 0  # cache length, set by prefill()

    def _forward(self, params, tokens, positions, mask, cache, index, cross_kv=None, cross_mask=None, logits_at=None):
        return self.model.apply(
            {"params": params},
            tokens,
            positions,
            mask,
            cache,
            index,
            cross_kv,
            cross_mask,
            logits_at,
            method=Transformer.cached_forward,
        )

    def prefill(self, params, inputs: dict[str, Array], max_new_tokens: int) -> dict[str, Any]:
        """Prefill (or encode) and return the decoding state with the first next-token logits.

        ``inputs`` holds ``prompt_tokens [B, P]`` and ``prompt_lengths [B]``
        (decoder-only, prefix-LM) or ``encoder_input_tokens``,
        ``encoder_positions`` and ``encoder_segment_ids`` (encoder-decoder).
        """
        cfg = self.cfg
        if cfg.arch not in ("decoder_only", "prefix_lm", "encoder_decoder"):
            raise ValueError(f"arch {cfg.arch!r} does not generate left to right")
        width = inputs["encoder_input_tokens" if cfg.arch == "encoder_decoder" else "prompt_tokens"].shape[1]
        needed = max_new_tokens + (0 if cfg.arch == "encoder_decoder" else width)
        if max(needed, width) > cfg.max_len:
            raise ValueError(
                f"decoding needs {max(needed, width)} positions but the model has {cfg.max_len}; "
                "shorten the prompt or max_new_tokens"
            )
        if cfg.arch == "encoder_decoder":
            B = inputs["encoder_input_tokens"].shape[0]
            encoded = self.model.apply({"params": params}, inputs, method=Transformer.encode)
            cross_kv = self.model.apply({"params": params}, encoded, method=Transformer.cross_kv)
            cross_mask = (inputs["encoder_segment_ids"] > 0)[:, None, None, :]
            self.max_len = max_len = max_new_tokens
            cache = init_cache(cfg, B, max_len)
            pos = jnp.zeros((B,), jnp.int32)
            bos = jnp.full((B, 1), inputs["bos_id"], jnp.int32)
            logits, cache = self._forward(
                params, bos, pos[:, None], _step_mask(pos, max_len), cache, pos, cross_kv, cross_mask
            )
            return {
                "logits": logits[:, 0],
                "cache": cache,
                "pos": pos + 1,
                "cross_kv": cross_kv,
                "cross_mask": cross_mask,
            }
        prompt, lengths = inputs["prompt_tokens"], inputs["prompt_lengths"]
        B, P = prompt.shape
        self.max_len = max_len = P + max_new_tokens
        cache = init_cache(cfg, B, max_len)
        positions = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))
        mask = _prefill_mask(cfg.arch, lengths, P, max_len)
        zero = jnp.zeros((B,), jnp.int32)
        logits, cache = self._forward(params, prompt, positions, mask, cache, zero, logits_at=lengths - 1)
        return {"logits": logits[:, 0], "cache": cache, "pos": lengths, "cross_kv": None, "cross_mask": None}

    def step(self, params, state: dict[str, Any], tokens_B: Array) -> tuple[Array, list]:
        """Feed one token per row at its position; return the next logits and cache."""
        pos = state["pos"]
        logits, cache = self._forward(
            params,
            tokens_B[:, None],
            pos[:, None],
            _step_mask(pos, self.max_len),
            state["cache"],
            pos,
            state["cross_kv"],
            state["cross_mask"],
        )
        return logits[:, 0], cache


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id", "temperature", "top_k", "top_p"))
def generate(
    params,
    inputs: dict[str, Array],
    key: Array,
    *,
    model: Transformer,
    max_new_tokens: int,
    eos_id: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> tuple[Array, Array]:
    """Generate up to ``max_new_tokens`` per row; returns ``(tokens [B, N], lengths [B])``.

    A row stops at its first ``eos_id`` (included in its length); positions
    after it hold ``eos_id``.
    """
    cached = CachedModel(model)
    state = cached.prefill(params, inputs, max_new_tokens)
    B = state["logits"].shape[0]
    out = jnp.full((B, max_new_tokens), eos_id, jnp.int32)

    def cond(carry):
        t, _, _, _, done, _ = carry
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        t, logits, state, out, done, key = carry
        key, sub = jax.random.split(key)
        token = jnp.where(done, eos_id, choose(logits, sub, temperature, top_k, top_p))
        out = out.at[:, t].set(token)
        done = done | (token == eos_id)
        logits, cache = cached.step(params, state, token)
        state = dict(state, cache=cache, pos=state["pos"] + 1)
        return t + 1, logits, state, out, done, key

    carry = (jnp.int32(0), state["logits"], state, out, jnp.zeros((B,), bool), key)
    _, _, _, out, _, _ = jax.lax.while_loop(cond, body, carry)
    is_eos = out == eos_id
    lengths = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1) + 1, max_new_tokens)
    return out, lengths


def _length_penalty(length: Array, alpha: float) -> Array:
    """Wu et al. (2016): ((5 + |Y|) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id", "beam_size", "alpha"))
def beam_search(
    params,
    inputs: dict[str, Array],
    *,
    model: Transformer,
    max_new_tokens: int,
    eos_id: int,
    beam_size: int = 4,
    alpha: float = 0.6,
) -> tuple[Array, Array]:
    """Beam search with Wu et al.'s length penalty; returns the best ``(tokens [B, N], lengths [B])``.

    Hypotheses end when they emit ``eos_id``; an EOS only finishes a hypothesis
    when it ranks within the top ``beam_size`` candidates (as in fairseq), so
    that beam size 1 is exactly greedy decoding when ``alpha == 0``.
    """
    K, N = beam_size, max_new_tokens
    flat_inputs = {k: (v if k == "bos_id" else jnp.repeat(v, K, axis=0)) for k, v in inputs.items()}
    cached = CachedModel(model)
    state = cached.prefill(params, flat_inputs, N)
    B = state["logits"].shape[0] // K
    alive_seq = jnp.full((B, K, N), eos_id, jnp.int32)
    alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (K - 1)), (B, 1))
    done_seq = jnp.full((B, K, N), eos_id, jnp.int32)
    done_score = jnp.full((B, K), NEG_INF)
    done_len = jnp.zeros((B, K), jnp.int32)

    def gather_beams(x, beam_BxK):
        """Reorder a ``[B * K, ...]`` array by per-row beam indices."""
        y = x.reshape(B, K, *x.shape[1:])
        idx = beam_BxK.reshape(B, K, *([1] * (y.ndim - 2)))
        return jnp.take_along_axis(y, idx, axis=1).reshape(x.shape)

    def cond(carry):
        t, _, _, alive_logp, _, done_score, _, _ = carry
        # The best a live hypothesis can still reach (log-probs only fall).
        best_alive = alive_logp[:, 0] / _length_penalty(jnp.float32(N), alpha)
        worst_done = done_score[:, -1]
        return (t < N) & ~jnp.all(worst_done >= best_alive)

    def body(carry):
        t, logits, state, alive_logp, alive_seq, done_score, done_seq, done_len = carry
        V = logits.shape[-1]
        logp = jax.nn.log_softmax(logits).reshape(B, K, V)
        cand = (alive_logp[:, :, None] + logp).reshape(B, K * V)
        top_logp, top_idx = jax.lax.top_k(cand, 2 * K)
        beam, token = top_idx // V, (top_idx % V).astype(jnp.int32)
        seqs = jnp.take_along_axis(alive_seq, beam[:, :, None], axis=1).at[:, :, t].set(token)
        is_eos = token == eos_id
        # Finished: EOS candidates ranked within the top K.
        rank_ok = jnp.arange(2 * K)[None, :] < K
        new_done = jnp.where(is_eos & rank_ok, top_logp / _length_penalty(t + 1.0, alpha), NEG_INF)
        all_score = jnp.concatenate([done_score, new_done], axis=1)
        all_seq = jnp.concatenate([done_seq, seqs], axis=1)
        all_len = jnp.concatenate([done_len, jnp.full((B, 2 * K), t + 1, jnp.int32)], axis=1)
        done_score, keep = jax.lax.top_k(all_score, K)
        done_seq = jnp.take_along_axis(all_seq, keep[:, :, None], axis=1)
        done_len = jnp.take_along_axis(all_len, keep, axis=1)
        # Alive: the best K candidates that did not end.
        alive_cand = jnp.where(is_eos, NEG_INF, top_logp)
        alive_logp, pick = jax.lax.top_k(alive_cand, K)
        alive_seq = jnp.take_along_axis(seqs, pick[:, :, None], axis=1)
        parent = jnp.take_along_axis(beam, pick, axis=1)
        next_tokens = jnp.take_along_axis(token, pick, axis=1).reshape(B * K)
        state = dict(state, cache=jax.tree.map(lambda x: gather_beams(x, parent), state["cache"]))
        logits, cache = cached.step(params, state, next_tokens)
        state = dict(state, cache=cache, pos=state["pos"] + 1)
        return t + 1, logits, state, alive_logp, alive_seq, done_score, done_seq, done_len

    carry = (jnp.int32(0), state["logits"], state, alive_logp, alive_seq, done_score, done_seq, done_len)
    t, _, _, alive_logp, alive_seq, done_score, done_seq, done_len = jax.lax.while_loop(cond, body, carry)
    # Rows where nothing finished fall back to their best live hypothesis.
    has_done = done_score[:, 0] > NEG_INF / 2
    best_seq = jnp.where(has_done[:, None], done_seq[:, 0], alive_seq[:, 0])
    best_len = jnp.where(has_done, done_len[:, 0], t)
    return best_seq, best_len


def pad_prompts(
    prompts: list[np.ndarray], pad_id: int, multiple: int = 1, max_width: int | None = None
) -> dict[str, np.ndarray]:
    """Right-pad token prompts into ``prompt_tokens [B, P]`` and ``prompt_lengths [B]``.

    ``P`` is rounded up to a ``multiple`` (at most ``max_width``) so that
    batches of similar prompts share one compiled decoder.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    width = -(-longest // multiple) * multiple
    if max_width is not None:
        width = max(longest, min(width, max_width))
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return {"prompt_tokens": tokens, "prompt_lengths": np.array([len(p) for p in prompts], np.int32)}


def encoder_inputs(sources: list[np.ndarray], pad_id: int, bos_id: int, multiple: int = 1) -> dict[str, np.ndarray]:
    """Right-pad encoder-decoder sources into the encoder fields of the batch schema."""
    padded = pad_prompts(sources, pad_id, multiple)
    B, S = padded["prompt_tokens"].shape
    valid = np.arange(S)[None, :] < padded["prompt_lengths"][:, None]
    return {
        "encoder_input_tokens": padded["prompt_tokens"],
        "encoder_positions": np.broadcast_to(np.arange(S, dtype=np.int32), (B, S)).copy(),
        "encoder_segment_ids": valid.astype(np.int32),
        "bos_id": np.int32(bos_id),
    }
