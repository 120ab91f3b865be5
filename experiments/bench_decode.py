"""Decoding speed with and without the key/value cache: ``python -m experiments.bench_decode``.

For each generative architecture at a fixed shape (4 layers, width 256, 4 heads,
vocabulary 8192; by default batch 4, a 32-token prompt or source, 256 new
tokens) it times greedy generation

* with the cache (:func:`gpt2_jax.decoding.generate`: prefill once, one token per step), and
* without it: every step re-runs the whole (decoder) stack over the padded
  sequence so far and reads the logits at the current position (the
  encoder-decoder still encodes its source once),

and prints generated tokens per second and the speed-up.  Both are jitted
``lax`` loops; the first call (compilation) is not timed.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from gpt2_jax import decoding
from gpt2_jax.model import Transformer, TransformerConfig

_NEW = flags.DEFINE_integer("new_tokens", 256, "Tokens generated per row.")
_PROMPT = flags.DEFINE_integer("prompt", 32, "Prompt (or source) length.")
_BATCH = flags.DEFINE_integer("batch", 4, "Rows decoded together.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed calls per method (median reported).")


def uncached_generate(model: Transformer, params, inputs: dict, new_tokens: int):
    """Greedy decoding that recomputes the stack over the whole sequence at every step."""
    cfg = model.cfg
    if cfg.arch == "encoder_decoder":
        B = inputs["encoder_input_tokens"].shape[0]
        encoded = model.apply({"params": params}, inputs, method=Transformer.encode)
        tokens = jnp.zeros((B, new_tokens), jnp.int32).at[:, 0].set(inputs["bos_id"])
        start = 0
    else:
        prompt = inputs["prompt_tokens"]
        B, P = prompt.shape
        encoded = None
        tokens = jnp.concatenate([prompt, jnp.zeros((B, new_tokens), jnp.int32)], axis=1)
        start = P - 1
    L = tokens.shape[1]
    batch = {"positions": jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))}
    if cfg.arch == "prefix_lm":
        batch["bidirectional"] = (jnp.arange(L)[None] < inputs["prompt_tokens"].shape[1]).astype(jnp.int32)
        batch["bidirectional"] = jnp.broadcast_to(batch["bidirectional"], (B, L))
    if encoded is not None:
        batch.update({k: inputs[k] for k in ("encoder_input_tokens", "encoder_positions", "encoder_segment_ids")})

    def body(t, tokens):
        logits = model.apply({"params": params}, dict(batch, input_tokens=tokens), encoded=encoded)
        nxt = jnp.argmax(logits[:, start + t], axis=-1).astype(jnp.int32)
        return tokens.at[:, jnp.minimum(start + t + 1, L - 1)].set(nxt)

    steps = new_tokens - 1 if cfg.arch == "encoder_decoder" else new_tokens
    return jax.lax.fori_loop(0, steps, body, tokens)


def timed(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(_REPEATS.value):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str]) -> None:
    del argv
    B, P, N = _BATCH.value, _PROMPT.value, _NEW.value
    rng = np.random.default_rng(0)
    print(f"batch {B}, prompt {P}, {N} new tokens, 4 layers x 256, vocabulary 8192 (greedy, float32)")
    print(f"{'arch':16s} {'cached tok/s':>13s} {'uncached tok/s':>15s} {'speed-up':>9s}")
    for arch in ("decoder_only", "prefix_lm", "encoder_decoder"):
        cfg = TransformerConfig(
            arch=arch,
            vocab_size=8192,
            num_layers=4,
            num_encoder_layers=4,
            num_heads=4,
            emb_dim=256,
            mlp_dim=1024,
            max_len=P + N,
        )
        model = Transformer(cfg)
        prompts = list(rng.integers(5, 8192, (B, P)))
        if arch == "encoder_decoder":
            inputs = decoding.encoder_inputs(prompts, 0, 1)
            init_batch = {"input_tokens": np.zeros((1, 4), np.int32), "positions": np.zeros((1, 4), np.int32)}
            init_batch.update({k: v[:1] for k, v in inputs.items() if k != "bos_id"})
        else:
            inputs = decoding.pad_prompts(prompts, 0)
            init_batch = {"input_tokens": inputs["prompt_tokens"][:1], "positions": np.zeros((1, P), np.int32)}
            if arch == "prefix_lm":
                init_batch["bidirectional"] = np.ones((1, P), np.int32)
        params = jax.jit(model.init)(jax.random.PRNGKey(0), init_batch)["params"]
        cached = jax.jit(
            lambda p, x, m=model: decoding.generate(p, x, jax.random.PRNGKey(0), model=m, max_new_tokens=N, eos_id=-1)
        )
        uncached = jax.jit(lambda p, x, m=model: uncached_generate(m, p, x, N))
        t_cached, t_uncached = timed(cached, params, inputs), timed(uncached, params, inputs)
        print(f"{arch:16s} {B * N / t_cached:13.0f} {B * N / t_uncached:15.0f} {t_uncached / t_cached:8.1f}x")


if __name__ == "__main__":
    app.run(main)
