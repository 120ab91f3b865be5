"""The chunked output layer + cross-entropy equals optax on whole logits, in every chunking, and never holds them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt2_jax import losses
from tests.helpers import jaxpr_equations


def batch(seed=0, B=3, L=5, D=8, V=17):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((B, L, D)), jnp.float32)
    emb = jnp.asarray(rng.standard_normal((V, D)), jnp.float32)
    # Ties: x[0, 0] = 0 makes every logit 0 (argmax takes the first index), and
    # two equal embedding rows make a tie at x[0, 1] too.
    x = x.at[0, 0].set(0.0)
    emb = emb.at[3].set(emb[2])
    targets = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32).at[0, 0].set(V - 1).at[0, 1].set(3)
    x = x.at[0, 1].set(emb[2] * 3.0)  # logits 2 and 3 are the (equal) maximum, the target is the second
    weights = jnp.asarray(rng.random((B, L)) > 0.3, jnp.float32).at[0, :2].set(1.0)  # the ties carry loss
    return x, emb, targets, weights


def reference(x, emb, targets, weights):
    logits = jnp.einsum("bld,vd->blv", x, emb)
    loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights)
    return loss, jnp.argmax(logits, -1)


@pytest.mark.parametrize("chunk_len", [0, 1, 2, 5, 64])  # whole, every position, uneven (5 = 2 + 2 + 1), one
def test_loss_argmax_and_gradients_equal_optax_on_materialised_logits(chunk_len):
    x, emb, targets, weights = batch()
    loss, argmax = losses.tied_cross_entropy(x, emb, targets, weights, chunk_len)
    want_loss, want_argmax = reference(x, emb, targets, weights)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_array_equal(argmax, want_argmax)
    assert int(argmax[0, 0]) == 0 and int(argmax[0, 1]) == 2, "ties go to the first index, as jnp.argmax"

    # Scaled by a cotangent (the train step divides by the token count), with
    # respect to x, the embedding and the loss weights.
    def scaled(f):
        return lambda x, emb, w: 0.37 * f(x, emb, targets, w)[0]

    got = jax.grad(scaled(lambda *a: losses.tied_cross_entropy(*a, chunk_len)), argnums=(0, 1, 2))(x, emb, weights)
    want = jax.grad(scaled(reference), argnums=(0, 1, 2))(x, emb, weights)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-5)
    assert not bool(jnp.any(got[0][weights == 0])), "tokens without loss weight get no gradient"


def test_jit_and_no_gradient_give_the_same_loss():
    x, emb, targets, weights = batch()
    eager = losses.tied_cross_entropy(x, emb, targets, weights, 2)
    jitted = jax.jit(losses.tied_cross_entropy, static_argnums=4)(x, emb, targets, weights, 2)
    value, _ = jax.value_and_grad(lambda x: losses.tied_cross_entropy(x, emb, targets, weights, 2)[0])(x)
    np.testing.assert_allclose(eager[0], jitted[0], rtol=1e-6)
    np.testing.assert_allclose(value, eager[0], rtol=1e-6)


def _compiled_grad(x, emb, targets, weights, chunk_len):
    def loss(x, emb):
        return losses.tied_cross_entropy(x, emb, targets, weights, chunk_len)[0]

    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, emb).compile()


def test_gradient_never_holds_the_whole_logits():
    # 512 positions x 4096 tokens of vocabulary: the float32 logits are 8 MB.
    x, emb, targets, weights = batch(B=2, L=256, D=16, V=4096)
    logits_bytes = 2 * 256 * 4096 * 4
    whole = _compiled_grad(x, emb, targets, weights, 0)
    chunked = _compiled_grad(x, emb, targets, weights, 32)
    assert whole.memory_analysis().temp_size_in_bytes >= logits_bytes
    assert chunked.memory_analysis().temp_size_in_bytes < logits_bytes / 2


def test_bfloat16_inputs_get_bfloat16_gradients_from_bfloat16_matmuls():
    x, emb, targets, weights = batch()
    xb, eb = x.astype(jnp.bfloat16), emb.astype(jnp.bfloat16)

    def loss(x, emb):
        return losses.tied_cross_entropy(x, emb, targets, weights, 2)[0]

    gx, ge = jax.grad(loss, argnums=(0, 1))(xb, eb)
    assert gx.dtype == ge.dtype == jnp.bfloat16
    want = jax.grad(loss, argnums=(0, 1))(xb.astype(jnp.float32), eb.astype(jnp.float32))
    for g, w in zip((gx, ge), want, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=0.05 * float(jnp.max(jnp.abs(w))))
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(xb, eb)
    dots = [e for e in jaxpr_equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert dots and all([str(v.aval.dtype) for v in e.invars] == ["bfloat16", "bfloat16"] for e in dots), dots


def test_metric_sums_count_weighted_hits_and_tokens():
    targets = jnp.array([[1, 2, 3], [4, 5, 6]])
    predictions = jnp.array([[1, 0, 3], [4, 5, 0]])
    weights = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.5, 1.0]])
    sums = losses.metric_sums(jnp.float32(7.0), predictions, {"target_tokens": targets, "loss_weights": weights})
    assert {k: float(v) for k, v in sums.items()} == {"loss_sum": 7.0, "weight_sum": 4.5, "correct_sum": 2.5}
