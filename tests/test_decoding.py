"""Incremental decoding equals full forward passes; sampling stays in its sets; beam 1 is greedy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gpt2_jax import decoding, sharding
from gpt2_jax.model import Transformer, TransformerConfig
from gpt2_jax.validation import POSITIONALS as POSITIONAL_SCHEMES
from tests.helpers import jaxpr_equations

GENERATIVE = ("decoder_only", "prefix_lm", "encoder_decoder")
V, EOS, BOS, PAD = 40, 2, 1, 0


def model_and_params(arch: str, seed: int = 0, **overrides):
    cfg = TransformerConfig(
        arch=arch,
        vocab_size=V,
        num_layers=2,
        num_encoder_layers=2,
        num_heads=2,
        emb_dim=32,
        mlp_dim=64,
        max_len=32,
        **overrides,
    )
    model = Transformer(cfg)
    b = full_batch(arch, np.full((1, 4), 5, np.int32), prefix=2, source=np.full((1, 3), 5, np.int32))
    params = model.init(jax.random.PRNGKey(seed), b)["params"]
    # Larger weights make the logits far from uniform, so argmax ties cannot hide bugs.
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)  # kernels (biases are zero)
    return model, params


def full_batch(arch, tokens, prefix=0, source=None):
    B, L = tokens.shape
    b = {
        "input_tokens": tokens,
        "target_tokens": tokens,
        "loss_weights": np.ones((B, L), np.float32),
        "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy(),
    }
    if arch == "prefix_lm":
        b["bidirectional"] = (np.arange(L)[None] < prefix).repeat(B, 0).astype(np.int32)
    if arch == "encoder_decoder":
        S = source.shape[1]
        b["encoder_input_tokens"] = source
        b["encoder_positions"] = np.broadcast_to(np.arange(S, dtype=np.int32), (B, S)).copy()
        b["encoder_segment_ids"] = (source != PAD).astype(np.int32)
    return b


def full_logits(model, params, arch, row_tokens, prefix, source=None):
    b = full_batch(arch, row_tokens[None], prefix, None if source is None else source[None])
    return np.asarray(jax.jit(model.apply)({"params": params}, b))[0]


@pytest.mark.parametrize("positional", POSITIONAL_SCHEMES)
@pytest.mark.parametrize("arch", GENERATIVE)
def test_cached_logits_equal_full_forward_at_every_position(arch, positional):
    model, params = model_and_params(arch, positional=positional)
    rng = np.random.default_rng(0)
    dec = decoding.CachedModel(model)
    if arch == "encoder_decoder":
        sources = [rng.integers(5, V, 3), rng.integers(5, V, 6)]  # ragged sources
        targets = rng.integers(5, V, (2, 8)).astype(np.int32)
        inputs = decoding.encoder_inputs(sources, PAD, BOS)
        state = dec.prefill(params, inputs, 8)
        got = [state["logits"]]
        for t in range(7):
            logits, cache = dec.step(params, state, jnp.asarray(targets[:, t]))
            state = dict(state, cache=cache, pos=state["pos"] + 1)
            got.append(logits)
        got = np.stack(got, 1)
        for row in range(2):
            dec_in = np.concatenate([[BOS], targets[row, :7]]).astype(np.int32)
            want = full_logits(model, params, arch, dec_in, 0, np.asarray(sources[row], np.int32))
            assert np.abs(got[row] - want).max() <= 1e-5
        return
    prompts = [rng.integers(5, V, 3), rng.integers(5, V, 5)]  # ragged prompts in one batch
    continuation = rng.integers(5, V, (2, 6)).astype(np.int32)
    state = dec.prefill(params, decoding.pad_prompts(prompts, PAD), 6)
    got = [state["logits"]]
    for t in range(5):
        logits, cache = dec.step(params, state, jnp.asarray(continuation[:, t]))
        state = dict(state, cache=cache, pos=state["pos"] + 1)
        got.append(logits)
    got = np.stack(got, 1)
    for row, prompt in enumerate(prompts):
        seq = np.concatenate([prompt, continuation[row, :5]]).astype(np.int32)
        want = full_logits(model, params, arch, seq, len(prompt))[len(prompt) - 1 :]
        assert np.abs(got[row] - want).max() <= 1e-5


@pytest.mark.parametrize("arch", ["decoder_only", "prefix_lm"])
def test_prefill_forms_logits_at_each_rows_last_prompt_position_only(arch):
    """The output layer runs on one position per row ``[B, 1, D]``, never on the whole prompt ``[B, P, V]``."""
    model, params = model_and_params(arch)
    prompts = [np.arange(5, 17), np.arange(5, 8)]  # 12 and 3 tokens: padded to one width
    inputs = decoding.pad_prompts(prompts, PAD)
    B, P = inputs["prompt_tokens"].shape
    jaxpr = jax.make_jaxpr(lambda p, i: decoding.CachedModel(model).prefill(p, i, 4)["logits"])(params, inputs)
    shapes = {tuple(v.aval.shape) for e in jaxpr_equations(jaxpr.jaxpr) for v in e.outvars}
    assert (B, 1, V) in shapes and (B, P, V) not in shapes and (B, V) == jaxpr.out_avals[0].shape


def greedy_by_full_forwards(model, params, arch, prompt, n, source=None):
    seq = [BOS] if arch == "encoder_decoder" else list(prompt)
    start = len(seq)
    for _ in range(n):
        logits = full_logits(model, params, arch, np.asarray(seq, np.int32), len(prompt), source)
        token = int(np.argmax(logits[-1]))
        seq.append(token)
        if token == EOS:
            break
    return seq[start:]


def decode_inputs(arch, prompts, sources):
    if arch == "encoder_decoder":
        return decoding.encoder_inputs(sources, PAD, BOS)
    return decoding.pad_prompts(prompts, PAD)


@pytest.mark.parametrize("arch", GENERATIVE)
def test_greedy_equals_repeated_argmax_of_full_forwards(arch):
    model, params = model_and_params(arch, seed=1)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(5, V, 2), rng.integers(5, V, 4)]
    sources = [rng.integers(5, V, 4), rng.integers(5, V, 2)]
    tokens, lengths = decoding.generate(
        params, decode_inputs(arch, prompts, sources), jax.random.PRNGKey(0), model=model, max_new_tokens=5, eos_id=EOS
    )
    for row in range(2):
        src = np.asarray(sources[row], np.int32) if arch == "encoder_decoder" else None
        want = greedy_by_full_forwards(model, params, arch, prompts[row], 5, src)
        assert np.asarray(tokens[row, : int(lengths[row])]).tolist() == want


def test_generation_stops_at_eos():
    logits = jnp.zeros((3, V)).at[:, EOS].set(10.0)
    assert int(decoding.choose(logits, jax.random.PRNGKey(0), 0.0, 0, 1.0)[0]) == EOS
    model, params = model_and_params("decoder_only")
    # Final LayerNorm outputs a constant vector of ones; EOS's (tied) embedding aligns with it.
    params["ln_f"] = {"scale": jnp.zeros_like(params["ln_f"]["scale"]), "bias": jnp.ones_like(params["ln_f"]["bias"])}
    params["wte"]["embedding"] = params["wte"]["embedding"].at[EOS].set(10.0)
    tokens, lengths = decoding.generate(
        params,
        decoding.pad_prompts([np.array([7, 8])], PAD),
        jax.random.PRNGKey(0),
        model=model,
        max_new_tokens=6,
        eos_id=EOS,
    )
    assert int(lengths[0]) == 1 and int(tokens[0, 0]) == EOS


def test_top_k_and_top_p_never_sample_outside_their_sets():
    logits = jnp.log(jnp.array([[0.4, 0.25, 0.15, 0.1, 0.06, 0.04]]))
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    sample = jax.vmap(lambda k, tk, tp: decoding.choose(logits, k, 1.0, tk, tp)[0], in_axes=(0, None, None))
    top2 = np.asarray(sample(keys, 2, 1.0))
    assert set(top2.tolist()) == {0, 1}
    nucleus = np.asarray(sample(keys, 0, 0.7))  # 0.4 + 0.25 < 0.7 <= 0.4 + 0.25 + 0.15
    assert set(nucleus.tolist()) == {0, 1, 2}
    # top-p applies to the distribution renormalised over the top-k: 0.4 / 0.65 >= 0.5.
    assert set(np.asarray(sample(keys, 2, 0.5)).tolist()) == {0}
    assert set(np.asarray(sample(keys, 3, 0.7)).tolist()) == {0, 1}
    assert np.mean(top2 == 0) == pytest.approx(0.4 / 0.65, abs=0.03), "renormalised within the set"
    filtered = decoding.filter_logits(logits, 0, 0.3)
    assert int((filtered > decoding.NEG_INF).sum()) == 1, "the top token is always kept"


def test_a_padded_vocabulary_is_never_sampled():
    model, params = model_and_params("decoder_only", pad_vocab_to=64)
    table = params["wte"]["embedding"]
    # Padded rows that would win every argmax if the model did not mask them.
    params["wte"]["embedding"] = table.at[V:].set(100.0 * jnp.sign(table[:V].mean(0)))
    prompts = decoding.pad_prompts([np.array([7, 8]), np.array([5])], PAD)
    for temperature, top_k, top_p in ((0.0, 0, 1.0), (1.0, 0, 1.0), (2.0, 0, 1.0), (1.0, 5, 0.9)):
        tokens, _ = decoding.generate(
            params,
            prompts,
            jax.random.PRNGKey(3),
            model=model,
            max_new_tokens=8,
            eos_id=-1,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        assert int(jnp.max(tokens)) < V, (temperature, top_k, top_p)


@pytest.mark.parametrize("arch", GENERATIVE)
def test_beam_search_with_beam_one_is_greedy(arch):
    model, params = model_and_params(arch, seed=2)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(5, V, 3), rng.integers(5, V, 3)]
    sources = [rng.integers(5, V, 3), rng.integers(5, V, 5)]
    inputs = decode_inputs(arch, prompts, sources)
    greedy, g_len = decoding.generate(params, inputs, jax.random.PRNGKey(0), model=model, max_new_tokens=7, eos_id=EOS)
    beam, b_len = decoding.beam_search(
        params, inputs, model=model, max_new_tokens=7, eos_id=EOS, beam_size=1, alpha=0.0
    )
    for row in range(2):
        assert int(g_len[row]) == int(b_len[row])
        assert np.asarray(greedy[row, : int(g_len[row])]).tolist() == np.asarray(beam[row, : int(b_len[row])]).tolist()


def sequence_logprob(model, params, arch, prompt, generated, source=None):
    seq = ([BOS] if arch == "encoder_decoder" else list(prompt)) + list(generated)
    logits = full_logits(model, params, arch, np.asarray(seq[:-1], np.int32), len(prompt), source)
    logp = jax.nn.log_softmax(jnp.asarray(logits))
    start = 0 if arch == "encoder_decoder" else len(prompt) - 1
    return float(sum(logp[start + i, t] for i, t in enumerate(generated)))


def test_wider_beams_find_at_least_as_likely_outputs():
    arch = "encoder_decoder"
    model, params = model_and_params(arch, seed=3)
    source = np.random.default_rng(3).integers(5, V, 4)
    inputs = decoding.encoder_inputs([source], PAD, BOS)
    scores = []
    for k in (1, 4):
        seq, n = decoding.beam_search(params, inputs, model=model, max_new_tokens=5, eos_id=EOS, beam_size=k, alpha=0.0)
        scores.append(sequence_logprob(model, params, arch, [], np.asarray(seq[0, : int(n[0])]).tolist(), source))
    assert scores[1] >= scores[0] - 1e-4


@pytest.mark.parametrize("arch", GENERATIVE)
def test_decoding_on_a_mesh_equals_one_device(arch):
    """Sharded parameters (data=2, fsdp=2, tensor=2), rows over the batch axes, heads over ``tensor``: same tokens.

    Greedy, sampled and beam outputs are compared token for token with one
    device's; the tokens come back split by rows, so the decoding ran split.
    """
    model, params = model_and_params(arch, seed=4)
    rng = np.random.default_rng(4)
    prompts = [rng.integers(5, V, n) for n in (2, 4, 3, 1)]
    sources = [rng.integers(5, V, n) for n in (4, 2, 3, 5)]
    inputs = decode_inputs(arch, prompts, sources)

    def decode(params, inputs):
        kw = dict(model=model, max_new_tokens=6, eos_id=EOS)
        greedy = decoding.generate(params, inputs, jax.random.PRNGKey(0), **kw)
        sampled = decoding.generate(params, inputs, jax.random.PRNGKey(1), temperature=1.0, top_k=8, **kw)
        beams = decoding.beam_search(params, inputs, beam_size=3, alpha=0.6, **kw)
        return greedy, sampled, beams

    want = jax.device_get(decode(params, inputs))
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = jax.device_put(params, sharding.tree_shardings(params, mesh))
    assert sharded["h_0"]["mlp"]["c_fc"]["kernel"].sharding.spec == P("fsdp", "tensor")
    got = sharding.traced_on(mesh, decode)(sharded, sharding.place_rows(inputs, mesh))
    assert got[0][0].sharding.spec == P(("data", "fsdp")), "the rows were decoded split over data x fsdp"
    for (w_tokens, w_lengths), (g_tokens, g_lengths) in zip(want, jax.device_get(got), strict=True):
        np.testing.assert_array_equal(g_lengths, w_lengths)
        np.testing.assert_array_equal(g_tokens, w_tokens)
