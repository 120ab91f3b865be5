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
