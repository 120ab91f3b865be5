import time, jax, jax.numpy as jnp, numpy as np
from gpt2_jax.model import Transformer, TransformerConfig, Block
from gpt2_jax import losses
from gpt2_jax.attention import attend
def bench(name, fn, *args, flops=None):
    jf = jax.jit(fn); jax.block_until_ready(jf(*args)); ts = []
    for _ in range(7):
        t = time.perf_counter(); jax.block_until_ready(jf(*args)); ts.append(time.perf_counter() - t)
    t = np.median(ts); print(f"{name:28s} {t*1e3:7.1f} ms" + (f"  {flops/t/1e9:6.1f} GFLOP/s" if flops else ""))
B, L, D, V, N = 8, 256, 384, 8192, 6
k = jax.random.split(jax.random.PRNGKey(0), 6)
x = jax.random.normal(k[0], (B, L, D)); E = 0.02 * jax.random.normal(k[1], (V, D))
tg = jax.random.randint(k[2], (B, L), 0, V); w = jnp.ones((B, L))
lf = lambda x, E: losses.tied_cross_entropy(x, E, tg, w, 128)[0]
bench("loss fwd", lf, x, E, flops=2*B*L*D*V)
bench("loss fwd+grads", jax.grad(lf, argnums=(0, 1)), x, E, flops=6*B*L*D*V)
bench("logits matmul only", lambda x, E: x.reshape(-1, D) @ E.T, x, E, flops=2*B*L*D*V)
cfg = TransformerConfig(vocab_size=V, num_layers=6, num_heads=N, emb_dim=D, mlp_dim=4*D, max_len=L)
blk = Block(cfg, 6)
p = blk.init(k[3], x, None, True, True, True)
bf = lambda p, x: blk.apply(p, x, None, True, True, True)[0]
bfl = 2*B*L*(12*D*D) + 4*B*L*L*D*0.75
bench("block fwd", bf, p, x, flops=bfl)
bench("block fwd+bwd", jax.grad(lambda p, x: jnp.sum(bf(p, x) ** 2), argnums=(0, 1)), p, x, flops=3*bfl)
q = jax.random.normal(k[4], (B, L, N, D // N))
af = lambda q: attend(q, q, q, None, True, "xla")
bench("attention fwd", af, q, flops=4*B*L*L*D*0.75)
bench("attention fwd+bwd", jax.grad(lambda q: jnp.sum(af(q) ** 2)), q, flops=3*4*B*L*L*D*0.75)
bench("layernorm fwd", lambda x: (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5), x)
