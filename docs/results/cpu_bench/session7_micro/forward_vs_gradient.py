"""Forward (loss) against forward+backward (value_and_grad) on the bench shape, decoder-only, f32, 2 cores."""
import time, jax, jax.numpy as jnp, numpy as np
from gpt2_jax.model import Transformer, TransformerConfig
from gpt2_jax import batch as batch_lib
cfg = TransformerConfig(arch="decoder_only", vocab_size=8192, num_layers=6, num_heads=6, emb_dim=384, mlp_dim=1536, max_len=256)
model = Transformer(cfg)
b = batch_lib.dummy("decoder_only", 8, 256, 0, 0)
b = {k: (jnp.asarray(np.random.randint(0, 8192, v.shape), v.dtype) if "tokens" in k else v) for k, v in b.items()}
params = model.init(jax.random.PRNGKey(0), b)["params"]
def loss(p):
    s, _ = model.apply({"params": p}, b, method=Transformer.loss)
    return s
f = jax.jit(loss); g = jax.jit(jax.value_and_grad(loss))
for name, fn in (("fwd", f), ("fwd+bwd", g)) * 3:
    jax.block_until_ready(fn(params)); ts = []
    for _ in range(4):
        t = time.perf_counter(); jax.block_until_ready(fn(params)); ts.append(time.perf_counter() - t)
    print(name, f"{np.median(ts)*1e3:.0f} ms")
