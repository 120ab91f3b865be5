"""The loss alone against the loss with its gradient (value_and_grad), decoder-only at the bench shape, float32."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax import batch as batch_lib
from gpt2_jax.model import Transformer, TransformerConfig

cfg = TransformerConfig(
    arch="decoder_only", vocab_size=8192, num_layers=6, num_heads=6, emb_dim=384, mlp_dim=1536, max_len=256
)
model = Transformer(cfg)
batch = batch_lib.dummy("decoder_only", 8, 256, 0, 0)
batch = {
    k: (jnp.asarray(np.random.randint(0, 8192, v.shape), v.dtype) if "tokens" in k else v) for k, v in batch.items()
}
params = model.init(jax.random.PRNGKey(0), batch)["params"]


def loss(p):
    loss_sum, _ = model.apply({"params": p}, batch, method=Transformer.loss)
    return loss_sum


for name, fn in (("fwd", jax.jit(loss)), ("fwd+bwd", jax.jit(jax.value_and_grad(loss)))) * 3:
    jax.block_until_ready(fn(params))
    times = []
    for _ in range(4):
        start = time.perf_counter()
        jax.block_until_ready(fn(params))
        times.append(time.perf_counter() - start)
    print(name, f"{np.median(times) * 1e3:.0f} ms")
