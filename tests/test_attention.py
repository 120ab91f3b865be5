"""Attention on the CPU (block-causal) equals jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax import attention, masks
from gpt2_jax.attention import CAUSAL_BLOCK, attend


def qkv(L, S, B=2, N=2, H=8, dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(L * 1000 + S), 4)
    q = jax.random.normal(keys[0], (B, L, N, H), dtype)
    k = jax.random.normal(keys[1], (B, S, N, H), dtype)
    v = jax.random.normal(keys[2], (B, S, N, H), dtype)
    cot = jax.random.normal(keys[3], (B, L, N, H), jnp.float32)
    return q, k, v, cot


def value_and_grads(f, q, k, v, cot):
    out = f(q, k, v)
    grads = jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32) * cot), argnums=(0, 1, 2))(q, k, v)
    return out, grads


def assert_same(f, g, q, k, v, cot, atol=1e-5):
    (out_f, grads_f), (out_g, grads_g) = value_and_grads(f, q, k, v, cot), value_and_grads(g, q, k, v, cot)
    np.testing.assert_allclose(np.asarray(out_f, np.float32), np.asarray(out_g, np.float32), atol=atol)
    for name, a, b in zip("qkv", grads_f, grads_g, strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=atol, err_msg=name)


def reference(mask=None, is_causal=False):
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation="xla")


def test_block_causal_attention_equals_full_causal_attention():
    L = 3 * CAUSAL_BLOCK
    q, k, v, cot = qkv(L, L)
    blocked = lambda q, k, v: attend(q, k, v, None, True, "xla")  # noqa: E731
    assert_same(blocked, reference(masks.causal_mask(L)), q, k, v, cot)
    jaxpr = str(jax.make_jaxpr(blocked)(q, k, v))
    assert jaxpr.count("dot_general") == 2 * 3, "one QK and one PV product per query block"


def test_bfloat16_inputs_give_bfloat16_outputs_and_gradients_close_to_float32():
    q, k, v, cot = qkv(2 * CAUSAL_BLOCK, 2 * CAUSAL_BLOCK)
    f = lambda q, k, v: attend(q, k, v, None, True, "xla")  # noqa: E731
    out, grads = value_and_grads(f, *(t.astype(jnp.bfloat16) for t in (q, k, v)), cot)
    want_out, want_grads = value_and_grads(reference(is_causal=True), q, k, v, cot)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    np.testing.assert_allclose(np.asarray(out, np.float32), want_out, atol=0.05)
    for a, b in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=0.1)


@pytest.mark.parametrize("backend_is_cpu", [True, False])
def test_attention_is_block_causal_only_on_the_cpu(monkeypatch, backend_is_cpu):
    monkeypatch.setattr(attention.jax, "default_backend", lambda: "cpu" if backend_is_cpu else "gpu")
    q, k, v, _ = qkv(2 * CAUSAL_BLOCK, 2 * CAUSAL_BLOCK)
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: attend(q, k, v, None, True, "xla"))(q, k, v))
    assert jaxpr.count("dot_general") == (4 if backend_is_cpu else 2)


def prefix_causal_masks(L):
    """Prefix-LM masks whose prefixes end inside the first block, at its end, past it, and a packed causal mask."""
    prefixes = np.array([0, 50, CAUSAL_BLOCK, CAUSAL_BLOCK + 70])
    prefix = masks.self_attention_mask("prefix", L, bidirectional=jnp.asarray(np.arange(L)[None] < prefixes[:, None]))
    segments = jnp.asarray(np.where(np.arange(L) < 150, 1, 2)[None].repeat(4, 0))
    return {"prefix": prefix, "packed causal": masks.self_attention_mask("causal", L, segment_ids=segments)}


@pytest.mark.parametrize("kind", ["prefix", "packed causal"])
def test_blockwise_attention_under_a_prefix_causal_mask_equals_full_masked_attention(kind):
    L = 3 * CAUSAL_BLOCK
    q, k, v, cot = qkv(L, L, B=4)
    mask = prefix_causal_masks(L)[kind]
    blocked = lambda q, k, v: attend(q, k, v, mask, False, "xla", prefix_causal=True)  # noqa: E731
    assert_same(blocked, reference(mask), q, k, v, cot)
    assert str(jax.make_jaxpr(blocked)(q, k, v)).count("cond[") == 2, "one run-time choice per block but the last"


def test_a_block_reads_the_keys_after_it_only_where_a_prefix_reaches_past_it():
    # Values past the first block are NaN: any query block that reads them
    # (even with zero weight) returns NaN, one that skips them does not.
    L = 2 * CAUSAL_BLOCK
    q, k, v, _ = qkv(L, L, B=2)
    v = v.at[:, CAUSAL_BLOCK:].set(jnp.nan)
    for prefix, reads_past in ((CAUSAL_BLOCK, False), (CAUSAL_BLOCK + 1, True)):
        marker = jnp.asarray(np.arange(L)[None] < np.array([[10], [prefix]]))
        mask = masks.self_attention_mask("prefix", L, bidirectional=marker)
        out = jax.jit(lambda q, k, v, m: attend(q, k, v, m, False, "xla", prefix_causal=True))(q, k, v, mask)
        first_block_nan = jnp.isnan(out[:, :CAUSAL_BLOCK])
        assert bool(jnp.all(first_block_nan) if reads_past else not jnp.any(first_block_nan)), prefix


@pytest.mark.parametrize(
    "arch, remat", [("prefix_lm", False), ("prefix_lm", True), ("decoder_only", False), ("encoder_only", False)]
)
def test_models_attend_block_by_block_only_where_the_mask_allows_it_and_nothing_changes(monkeypatch, arch, remat):
    from gpt2_jax.data import objectives
    from gpt2_jax.data.tokenizers import ByteTokenizer
    from gpt2_jax.model import Transformer, TransformerConfig

    tok, L = ByteTokenizer(), 2 * CAUSAL_BLOCK
    rng = np.random.default_rng(0)
    windows = rng.integers(tok.num_specials, tok.vocab_size, size=(2, L + 1))
    if arch == "encoder_only":
        batch = objectives.mlm_batch(windows[:, :L], tok, 0.3, rng)
    else:
        batch = objectives.lm_batch(windows, np.array([40, CAUSAL_BLOCK + 30]), arch, tok)
    if arch != "prefix_lm":  # two examples packed per row: a mask tensor
        batch["segment_ids"] = np.where(np.arange(L) < 150, 1, 2)[None].repeat(2, 0).astype(np.int32)
    cfg = TransformerConfig(
        arch=arch, vocab_size=tok.vocab_size, num_layers=1, num_heads=2, emb_dim=16, max_len=L, remat=remat
    )
    model = Transformer(cfg)
    params = model.init(jax.random.PRNGKey(0), batch)["params"]

    def value_and_grads() -> tuple[bool, jax.Array, list[jax.Array]]:
        """Whether the step attends block by block, its loss and gradients (traced afresh: no trace cache)."""

        def loss(params):
            return model.apply({"params": params}, batch, method=Transformer.loss)[0]

        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        return "cond[" in str(jax.make_jaxpr(loss)(params)), value, jax.tree.leaves(grads)

    blockwise, value, grads = value_and_grads()
    assert blockwise == (arch != "encoder_only"), "a bidirectional mask must not go block by block"
    monkeypatch.setattr(attention.jax, "default_backend", lambda: "gpu")  # one masked L x L product instead
    blockwise, want_value, want_grads = value_and_grads()
    assert not blockwise
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for a, b in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
