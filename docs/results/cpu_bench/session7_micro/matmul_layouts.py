import time, jax, jax.numpy as jnp, numpy as np
T, D, F = 2048, 384, 1536
k = jax.random.split(jax.random.PRNGKey(0), 4)
x = jax.random.normal(k[0], (T, D)); dy = jax.random.normal(k[1], (T, F)); W = jax.random.normal(k[2], (D, F))
bar = jax.lax.optimization_barrier
fns = {
 "fwd   x@W       NN": (lambda x, W: x @ W, (x, W)),
 "dW    x.T@dy    TN": (lambda x, dy: x.T @ dy, (x, dy)),
 "dW    bar(x.T)@dy  ": (lambda x, dy: bar(x.T) @ dy, (x, dy)),
 "dW^T  bar(dy.T)@x  ": (lambda x, dy: (bar(dy.T) @ x), (x, dy)),
 "dx    dy@W.T    NT": (lambda dy, W: dy @ W.T, (dy, W)),
 "dx    dy@bar(W.T)  ": (lambda dy, W: dy @ bar(W.T), (dy, W)),
 "xT copy only       ": (lambda x, dy: bar(x.T) + 0, (x, dy)),
 "dyT copy only      ": (lambda x, dy: bar(dy.T) + 0, (x, dy)),
}
res = {}
for name, (f, args) in fns.items():
    jf = jax.jit(f); jax.block_until_ready(jf(*args))
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(5): out = jf(*args)
        jax.block_until_ready(out); ts.append((time.perf_counter() - t) / 5)
    res[name] = np.median(ts)
for r in range(1):
    for name, t in res.items():
        print(f"{name} {t*1e3:7.2f} ms  {2*T*D*F/t/1e9:6.1f} GFLOP/s")
