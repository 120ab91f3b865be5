"""One causal attention layer at the bench shape, forward and forward + backward, in four formulations."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax.attention import attend

sys.path.insert(0, os.path.dirname(__file__))
from timing import bench

B, L, N, H = 8, 256, 6, 64
keys = jax.random.split(jax.random.PRNGKey(0), 4)
q, kk, v = (jax.random.normal(keys[i], (B, L, N, H)) for i in range(3))
do = jax.random.normal(keys[3], (B, L, N, H))
MASK = jnp.tril(jnp.ones((L, L), bool))


def forward_and_backward(f):
    def g(q, k, v):
        _, vjp = jax.vjp(f, q, k, v)
        return vjp(do)

    return g


def current(q, k, v):
    return attend(q, k, v, None, True, "xla")


def full(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


def manual(q, k, v):
    qh, kh, vh = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # B N L H
    s = jnp.matmul(qh, jnp.swapaxes(kh, -1, -2)) / np.sqrt(H)
    p = jax.nn.softmax(jnp.where(MASK, s, -1e30), axis=-1)
    return jnp.swapaxes(jnp.matmul(p, vh), 1, 2)


def manual_normalise_output(q, k, v):
    qh, kh, vh = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    s = jnp.matmul(qh * (1 / np.sqrt(H)), jnp.swapaxes(kh, -1, -2))
    m = jax.lax.stop_gradient(jnp.max(jnp.where(MASK, s, -1e30), -1, keepdims=True))
    e = jnp.where(MASK, jnp.exp(s - m), 0.0)
    return jnp.swapaxes(jnp.matmul(e, vh) / jnp.sum(e, -1, keepdims=True), 1, 2)


for name, f in (
    ("current blockwise", current),
    ("full is_causal", full),
    ("manual BNLH softmax", manual),
    ("manual normalise output", manual_normalise_output),
):
    np.testing.assert_allclose(f(q, kk, v), current(q, kk, v), atol=2e-5)
    bench(name + " fwd", f, q, kk, v, width=34, decimals=1)
    bench(name + " fwd+bwd", forward_and_backward(f), q, kk, v, width=34, decimals=1)
