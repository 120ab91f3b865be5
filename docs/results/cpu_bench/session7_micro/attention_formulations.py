import time, jax, jax.numpy as jnp, numpy as np
from gpt2_jax.attention import attend
def bench(name, fn, *args, flops=None):
    jf = jax.jit(fn); jax.block_until_ready(jf(*args)); ts = []
    for _ in range(9):
        t = time.perf_counter(); jax.block_until_ready(jf(*args)); ts.append(time.perf_counter() - t)
    t = np.median(ts); print(f"{name:34s} {t*1e3:7.1f} ms")
B, L, N, H = 8, 256, 6, 64
k = jax.random.split(jax.random.PRNGKey(0), 4)
q, kk, v = (jax.random.normal(k[i], (B, L, N, H)) for i in range(3))
do = jax.random.normal(k[3], (B, L, N, H))
def fb(f):
    def g(q, kk, v):
        o, vjp = jax.vjp(f, q, kk, v)
        return vjp(do)
    return g
cur = lambda q, k, v: attend(q, k, v, None, True, "xla")
full = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
def manual(q, k, v):
    qh, kh, vh = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # B N L H
    s = jnp.matmul(qh, jnp.swapaxes(kh, -1, -2)) / np.sqrt(H)
    mask = jnp.tril(jnp.ones((L, L), bool))
    s = jnp.where(mask, s, -1e30)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.swapaxes(jnp.matmul(p, vh), 1, 2)
def manual_exp(q, k, v):
    qh, kh, vh = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    s = jnp.matmul(qh * (1 / np.sqrt(H)), jnp.swapaxes(kh, -1, -2))
    mask = jnp.tril(jnp.ones((L, L), bool))
    m = jax.lax.stop_gradient(jnp.max(jnp.where(mask, s, -1e30), -1, keepdims=True))
    e = jnp.where(mask, jnp.exp(s - m), 0.0)
    o = jnp.matmul(e, vh) / jnp.sum(e, -1, keepdims=True)
    return jnp.swapaxes(o, 1, 2)
for name, f in (("current blockwise", cur), ("full is_causal", full), ("manual BNLH softmax", manual), ("manual normalise output", manual_exp)):
    np.testing.assert_allclose(f(q, kk, v), cur(q, kk, v), atol=2e-5)
    bench(name + " fwd", f, q, kk, v)
    bench(name + " fwd+bwd", fb(f), q, kk, v)
