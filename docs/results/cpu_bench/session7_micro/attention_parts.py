import time, jax, jax.numpy as jnp, numpy as np
def bench(name, fn, *args, flops=None):
    jf = jax.jit(fn); jax.block_until_ready(jf(*args)); ts = []
    for _ in range(9):
        t = time.perf_counter(); jax.block_until_ready(jf(*args)); ts.append(time.perf_counter() - t)
    t = np.median(ts); print(f"{name:40s} {t*1e3:7.2f} ms" + (f"  {flops/t/1e9:6.1f} GFLOP/s" if flops else ""))
B, L, N, H = 8, 256, 6, 64
k = jax.random.split(jax.random.PRNGKey(0), 4)
qh = jax.random.normal(k[0], (B, N, L, H)); kh = jax.random.normal(k[1], (B, N, L, H))
s = jax.random.normal(k[2], (B, N, L, L))
q = jax.random.normal(k[0], (B, L, N, H))
bench("QK^T batched BNLH", lambda a, b: jnp.matmul(a, jnp.swapaxes(b, -1, -2)), qh, kh, flops=2*B*N*L*L*H)
bench("QK^T einsum from BLNH", lambda a, b: jnp.einsum("blnh,bsnh->bnls", a, b), q, q, flops=2*B*N*L*L*H)
bench("PV batched", lambda p, v: jnp.matmul(p, v), s, qh, flops=2*B*N*L*L*H)
bench("flat QK^T as one matmul (ref)", lambda a, b: a.reshape(-1, H) @ b.reshape(-1, H)[:256].T, qh, kh, flops=2*B*N*L*L*H)
bench("exp", jnp.exp, s)
bench("softmax", lambda s: jax.nn.softmax(s, -1), s)
bench("max+exp+sum", lambda s: jnp.sum(jnp.exp(s - s.max(-1, keepdims=True)), -1), s)
bench("swapaxes copy BLNH->BNLH", lambda a: jnp.swapaxes(a, 1, 2) + 0, q)
