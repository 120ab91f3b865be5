import time, jax, jax.numpy as jnp, numpy as np
def bench(name, fn, *args, flops=None):
    jf = jax.jit(fn); jax.block_until_ready(jf(*args)); ts = []
    for _ in range(11):
        t = time.perf_counter(); jax.block_until_ready(jf(*args)); ts.append(time.perf_counter() - t)
    t = np.median(ts); print(f"{name:40s} {t*1e3:7.2f} ms" + (f"  {flops/t/1e9:6.1f} GFLOP/s" if flops else ""))
B, L, N, H = 8, 256, 6, 64
k = jax.random.split(jax.random.PRNGKey(0), 4)
a = jax.random.normal(k[0], (B * N, L, H)); b = jax.random.normal(k[1], (B * N, L, H))
F = 2 * B * N * L * L * H
mm = lambda a, b: jnp.matmul(a, jnp.swapaxes(b, -1, -2))
bench("merged batch 48 NT", mm, a, b, flops=F)
bench("merged batch 48 NN (bT given)", lambda a, bt: jnp.matmul(a, bt), a, jnp.swapaxes(b, -1, -2) + 0, flops=F)
bench("two halves", lambda a, b: jnp.concatenate([mm(a[:24], b[:24]), mm(a[24:], b[24:])]), a, b, flops=F)
bench("python loop 48", lambda a, b: jnp.stack([a[i] @ b[i].T for i in range(48)]), a, b, flops=F)
bench("python loop 6 x [8]", lambda a, b: jnp.concatenate([mm(a[i*8:(i+1)*8], b[i*8:(i+1)*8]) for i in range(6)]), a, b, flops=F)
bench("vmap dot", jax.vmap(lambda x, y: x @ y.T), a, b, flops=F)
