"""The cross-entropy with its hand-written derivative equals optax's, and so do its metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt2_jax import losses


def batch(seed=0, V=17):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.standard_normal((3, 5, V)) * 3, jnp.float32)
    logits = logits.at[0, 0].set(0.0).at[0, 1, :4].set(9.0)  # ties: argmax takes the first index
    targets = jnp.asarray(rng.integers(0, V, (3, 5)), jnp.int32).at[0, 0].set(V - 1).at[0, 1].set(2)
    weights = jnp.asarray(rng.random((3, 5)) > 0.3, jnp.float32).at[0, :2].set(1.0)  # the ties carry loss
    return logits, targets, weights


def reference(logits, targets, weights):
    loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights)
    return loss, jnp.sum((jnp.argmax(logits, -1) == targets) * weights)


def ours(logits, targets, weights):
    loss, metrics = losses.weighted_cross_entropy(logits, targets, weights)
    return loss, metrics["correct_sum"]


def test_loss_metrics_and_gradient_equal_optax_and_argmax():
    logits, targets, weights = batch()
    for got, want in zip(ours(logits, targets, weights), reference(logits, targets, weights), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    target_is_a_max = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0] == jnp.max(logits, -1)
    assert float(jnp.sum(target_is_a_max * weights)) == float(reference(logits, targets, weights)[1]) + 2, (
        "the batch has two weighted ties where the target is a maximum but not the first one"
    )
    g = jax.grad(lambda x: ours(x, targets, weights)[0])(logits)
    g_want = jax.grad(lambda x: reference(x, targets, weights)[0])(logits)
    np.testing.assert_allclose(g, g_want, atol=1e-6)
    np.testing.assert_allclose(jnp.sum(g, -1), 0.0, atol=1e-5)  # softmax - one_hot sums to zero per token
    assert not bool(jnp.any(g[weights == 0])), "tokens without loss weight get no gradient"


def test_backward_has_no_scatter_unlike_automatic_differentiation():
    logits, targets, weights = batch(V=64)

    def compiled_grad(loss):
        return jax.jit(jax.grad(lambda x: loss(x, targets, weights)[0])).lower(logits).compile().as_text()

    assert " scatter(" in compiled_grad(reference), "the automatic derivative scatters the one-hot term"
    assert " scatter(" not in compiled_grad(ours)


def test_bfloat16_logits_get_bfloat16_gradients():
    logits, targets, weights = batch()
    g = jax.grad(lambda x: ours(x, targets, weights)[0])(logits.astype(jnp.bfloat16))
    assert g.dtype == jnp.bfloat16
    want = jax.grad(lambda x: ours(x, targets, weights)[0])(logits.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(g, np.float32), want, atol=2e-2)
