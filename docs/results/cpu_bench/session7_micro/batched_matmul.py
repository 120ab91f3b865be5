"""Attention's 48 per-head products ([256, 64] x [64, 256]) batched in different ways."""

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from timing import bench

B, L, N, H = 8, 256, 6, 64
FLOPS = 2 * B * N * L * L * H
keys = jax.random.split(jax.random.PRNGKey(0), 4)
a, b = jax.random.normal(keys[0], (B * N, L, H)), jax.random.normal(keys[1], (B * N, L, H))


def nt(a, b):
    return jnp.matmul(a, jnp.swapaxes(b, -1, -2))


def halves(a, b):
    return jnp.concatenate([nt(a[:24], b[:24]), nt(a[24:], b[24:])])


def loop_48(a, b):
    return jnp.stack([a[i] @ b[i].T for i in range(48)])


def loop_6(a, b):
    return jnp.concatenate([nt(a[i * 8 : (i + 1) * 8], b[i * 8 : (i + 1) * 8]) for i in range(6)])


bench("merged batch 48 NT", nt, a, b, flops=FLOPS, repeats=11)
bench("merged batch 48 NN (bT given)", jnp.matmul, a, jnp.swapaxes(b, -1, -2) + 0, flops=FLOPS, repeats=11)
bench("two halves", halves, a, b, flops=FLOPS, repeats=11)
bench("python loop 48", loop_48, a, b, flops=FLOPS, repeats=11)
bench("python loop 6 x [8]", loop_6, a, b, flops=FLOPS, repeats=11)
bench("vmap dot", jax.vmap(lambda x, y: x @ y.T), a, b, flops=FLOPS, repeats=11)
