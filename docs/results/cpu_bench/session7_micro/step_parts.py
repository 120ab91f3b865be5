"""The train step's parts at the bench shape: the fused output layer + loss, one block, one attention layer."""

import os
import sys

import jax
import jax.numpy as jnp

from gpt2_jax import losses
from gpt2_jax.attention import attend
from gpt2_jax.model import Block, TransformerConfig

sys.path.insert(0, os.path.dirname(__file__))
from timing import bench

B, L, D, V, N = 8, 256, 384, 8192, 6
keys = jax.random.split(jax.random.PRNGKey(0), 6)
x, E = jax.random.normal(keys[0], (B, L, D)), 0.02 * jax.random.normal(keys[1], (V, D))
targets, weights = jax.random.randint(keys[2], (B, L), 0, V), jnp.ones((B, L))


def loss(x, E):
    return losses.tied_cross_entropy(x, E, targets, weights, 128)[0]


def run(name, fn, *args, flops=None):
    bench(name, fn, *args, flops=flops, repeats=7, width=28, decimals=1)


run("loss fwd", loss, x, E, flops=2 * B * L * D * V)
run("loss fwd+grads", jax.grad(loss, argnums=(0, 1)), x, E, flops=6 * B * L * D * V)
run("logits matmul only", lambda x, E: x.reshape(-1, D) @ E.T, x, E, flops=2 * B * L * D * V)
cfg = TransformerConfig(vocab_size=V, num_layers=6, num_heads=N, emb_dim=D, mlp_dim=4 * D, max_len=L)
block = Block(cfg, 6)
params = block.init(keys[3], x, None, True, True, True)


def block_forward(p, x):
    return block.apply(p, x, None, True, True, True)[0]


block_flops = 2 * B * L * (12 * D * D) + 4 * B * L * L * D * 0.75
run("block fwd", block_forward, params, x, flops=block_flops)
run(
    "block fwd+bwd",
    jax.grad(lambda p, x: jnp.sum(block_forward(p, x) ** 2), argnums=(0, 1)),
    params,
    x,
    flops=3 * block_flops,
)
q = jax.random.normal(keys[4], (B, L, N, D // N))


def attention(q):
    return attend(q, q, q, None, True, "xla")


run("attention fwd", attention, q, flops=4 * B * L * L * D * 0.75)
run("attention fwd+bwd", jax.grad(lambda q: jnp.sum(attention(q) ** 2)), q, flops=3 * 4 * B * L * L * D * 0.75)
run("layernorm fwd", lambda x: (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5), x)
