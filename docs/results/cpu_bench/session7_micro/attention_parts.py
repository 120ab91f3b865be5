"""Attention's pieces at the bench shape: the per-head matmuls against one flat matmul of equal FLOPs; softmax."""

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from timing import bench

B, L, N, H = 8, 256, 6, 64
FLOPS = 2 * B * N * L * L * H
keys = jax.random.split(jax.random.PRNGKey(0), 4)
qh, kh = jax.random.normal(keys[0], (B, N, L, H)), jax.random.normal(keys[1], (B, N, L, H))
s = jax.random.normal(keys[2], (B, N, L, L))
q = jax.random.normal(keys[0], (B, L, N, H))
bench("QK^T batched BNLH", lambda a, b: jnp.matmul(a, jnp.swapaxes(b, -1, -2)), qh, kh, flops=FLOPS)
bench("QK^T einsum from BLNH", lambda a, b: jnp.einsum("blnh,bsnh->bnls", a, b), q, q, flops=FLOPS)
bench("PV batched", jnp.matmul, s, qh, flops=FLOPS)
bench("flat QK^T as one matmul (ref)", lambda a, b: a.reshape(-1, H) @ b.reshape(-1, H)[:256].T, qh, kh, flops=FLOPS)
bench("exp", jnp.exp, s)
bench("softmax", lambda s: jax.nn.softmax(s, -1), s)
bench("max+exp+sum", lambda s: jnp.sum(jnp.exp(s - s.max(-1, keepdims=True)), -1), s)
bench("swapaxes copy BLNH->BNLH", lambda a: jnp.swapaxes(a, 1, 2) + 0, q)
