"""``attention.attend``: None is the causal mask, and each implementation name reaches the kernel it names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax import masks
from gpt2_jax.attention import attend
from gpt2_jax.fast import attention as fast_attention


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


def explicit(mask):
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


def test_no_mask_is_the_causal_mask():
    q, k, v, cot = qkv(7, 7)
    assert_same(lambda q, k, v: attend(q, k, v, None, "xla"), explicit(masks.causal_mask(7)), q, k, v, cot)


def test_a_mask_is_applied_as_given():
    q, k, v, cot = qkv(5, 6)
    mask = jnp.asarray(np.random.default_rng(0).random((2, 1, 5, 6)) > 0.4).at[..., 0].set(True)
    assert_same(lambda q, k, v: attend(q, k, v, mask, "xla"), explicit(mask), q, k, v, cot)


@pytest.mark.parametrize(
    "L, with_mask, blocked",
    [
        (2 * fast_attention.BLOCK, False, True),
        (2 * fast_attention.BLOCK, True, False),
        (fast_attention.BLOCK, False, False),
    ],
)
def test_block_causal_runs_only_on_causal_self_attention_of_whole_blocks(L, with_mask, blocked):
    q, k, v, cot = qkv(L, L)
    mask = masks.causal_mask(L) if with_mask else None
    f = lambda q, k, v: attend(q, k, v, mask, "block_causal")  # noqa: E731
    blocks = str(jax.make_jaxpr(f)(q, k, v)).count("dot_general") // 2
    assert blocks == (L // fast_attention.BLOCK if blocked else 1)
    assert_same(f, explicit(masks.causal_mask(L)), q, k, v, cot)
