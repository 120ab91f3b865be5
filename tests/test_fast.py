"""Every opt-in speed path (gpt2_jax.fast) computes what its plain form computes: values and gradients."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax import losses
from gpt2_jax.fast import attention as fast_attention
from gpt2_jax.fast import cross_entropy, gelu
from tests.test_attention import assert_same, explicit, qkv
from tests.test_losses import batch


def _value_and_grads(loss_fn, x, emb, targets, weights):
    def scaled(x, emb, w):  # a cotangent other than 1, as the train step's division by the token count
        loss, argmax = loss_fn(x, emb, targets, w)
        return 0.37 * loss, argmax

    (value, argmax), grads = jax.value_and_grad(scaled, argnums=(0, 1, 2), has_aux=True)(x, emb, weights)
    return value, argmax, grads


@pytest.mark.parametrize("chunk_len", [0, 1, 5, 64])  # whole, every position, uneven, one chunk
@pytest.mark.parametrize("vocab_size", [17, 13])  # all rows, or the last 4 rows padding
def test_fused_cross_entropy_equals_the_chunked_loss(chunk_len, vocab_size):
    x, emb, targets, weights = batch()
    targets = targets % vocab_size

    def plain(*a):
        return losses.tied_cross_entropy(*a, chunk_len, vocab_size)

    def fused(*a):
        return cross_entropy.fused_tied_cross_entropy(*a, chunk_len, vocab_size)

    want, want_argmax, want_grads = _value_and_grads(plain, x, emb, targets, weights)
    got, argmax, grads = _value_and_grads(fused, x, emb, targets, weights)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(argmax, want_argmax)
    assert int(argmax.max()) < vocab_size
    for name, g, w in zip(("x", "embedding", "weights"), grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-5, err_msg=name)


def test_fused_cross_entropy_in_bfloat16_gets_bfloat16_gradients_close_to_float32():
    x, emb, targets, weights = batch()

    def loss(x, emb):
        return cross_entropy.fused_tied_cross_entropy(x, emb, targets, weights, 2, emb.shape[0])[0]

    gx, ge = jax.grad(loss, argnums=(0, 1))(x.astype(jnp.bfloat16), emb.astype(jnp.bfloat16))
    assert gx.dtype == ge.dtype == jnp.bfloat16
    want = jax.grad(loss, argnums=(0, 1))(x, emb)
    for g, w in zip((gx, ge), want, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=0.05 * float(jnp.max(jnp.abs(w))))


def test_fused_cross_entropy_scatters_the_one_hot_into_embedding_rows_not_logits():
    x, emb, targets, weights = batch(B=2, L=256, D=16, V=4096)

    def loss(x, emb):
        return cross_entropy.fused_tied_cross_entropy(x, emb, targets, weights, 32, emb.shape[0])[0]

    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, emb).compile().as_text()
    assert set(re.findall(r"= \w+\[([\d,]*)\][^ ]* scatter\(", text)) <= {"4096,16"}


def test_block_causal_attention_equals_causal_attention():
    L = 3 * fast_attention.BLOCK
    q, k, v, cot = qkv(L, L)
    assert_same(fast_attention.block_causal_attention, explicit(jax.numpy.tril(jnp.ones((L, L), bool))), q, k, v, cot)


def test_block_causal_attention_in_bfloat16_stays_bfloat16_and_close_to_float32():
    L = 2 * fast_attention.BLOCK
    q, k, v, _cot = qkv(L, L)
    f = fast_attention.block_causal_attention
    out = f(*(t.astype(jnp.bfloat16) for t in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), f(q, k, v), atol=0.05)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_recomputing_gelu_equals_autodiff_gelu(dtype):
    x = (4 * jax.random.normal(jax.random.PRNGKey(0), (512,))).astype(dtype)
    cot = jax.random.normal(jax.random.PRNGKey(1), (512,)).astype(dtype)
    np.testing.assert_array_equal(gelu.gelu(x), jax.nn.gelu(x, approximate=True))
    got = jax.grad(lambda x: jnp.sum(gelu.gelu(x) * cot))(x)
    assert got.dtype == dtype
    # The float32 function's derivative, from which bf16 is one rounding away.
    want = jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=True) * cot.astype(jnp.float32)))(
        x.astype(jnp.float32)
    )
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tol, atol=tol)


def test_recomputing_gelu_keeps_only_its_input_for_the_backward_pass():
    x = jnp.linspace(-3, 3, 64).astype(jnp.bfloat16)
    _, residuals = jax.vjp(gelu.gelu, x)
    kept = [r for r in jax.tree.leaves(residuals) if getattr(r, "shape", ()) == x.shape]
    assert len(kept) == 1 and kept[0] is x


@pytest.mark.parametrize("arch", ["decoder_only", "prefix_lm", "encoder_decoder", "encoder_only"])
def test_a_model_with_every_speed_path_equals_the_plain_model(arch):
    from gpt2_jax import batch as batch_lib
    from gpt2_jax.model import Transformer, TransformerConfig

    L = 2 * fast_attention.BLOCK  # long enough for block-causal attention
    base = dict(arch=arch, vocab_size=61, num_layers=2, num_heads=2, emb_dim=16, max_len=L, loss_chunk_len=100)
    plain = Transformer(TransformerConfig(**base))
    fast = Transformer(
        TransformerConfig(**base, attention_impl="block_causal", loss_impl="fused", gelu_impl="recompute")
    )
    inputs = batch_lib.dummy(arch, 2, L, L, 0)
    rng = np.random.default_rng(0)
    for key in ("input_tokens", "target_tokens", "encoder_input_tokens"):
        if key in inputs:
            inputs[key] = rng.integers(0, 61, inputs[key].shape).astype(np.int32)
    inputs["loss_weights"] = (rng.random(inputs["loss_weights"].shape) > 0.3).astype(np.float32)
    params = plain.init(jax.random.PRNGKey(0), inputs)["params"]

    def value_and_grads(model):
        def loss(p):
            return model.apply({"params": p}, inputs, method=Transformer.loss)[0]

        return jax.jit(jax.value_and_grad(loss))(params)

    (want, want_grads), (got, grads) = value_and_grads(plain), value_and_grads(fast)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
