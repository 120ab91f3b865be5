"""A dense layer's three products ([2048, 384] x [384, 1536]) in the layouts a backward pass can use.

Each time is the median of 7 rounds of 5 calls; ``bar`` keeps XLA from folding a written-out transpose back into
the matmul.
"""

import time

import jax
import numpy as np

T, D, F = 2048, 384, 1536
keys = jax.random.split(jax.random.PRNGKey(0), 4)
x, dy, W = (jax.random.normal(keys[0], (T, D)), jax.random.normal(keys[1], (T, F)), jax.random.normal(keys[2], (D, F)))
bar = jax.lax.optimization_barrier
products = {
    "fwd   x@W       NN": (lambda x, W: x @ W, (x, W)),
    "dW    x.T@dy    TN": (lambda x, dy: x.T @ dy, (x, dy)),
    "dW    bar(x.T)@dy  ": (lambda x, dy: bar(x.T) @ dy, (x, dy)),
    "dW^T  bar(dy.T)@x  ": (lambda x, dy: bar(dy.T) @ x, (x, dy)),
    "dx    dy@W.T    NT": (lambda dy, W: dy @ W.T, (dy, W)),
    "dx    dy@bar(W.T)  ": (lambda dy, W: dy @ bar(W.T), (dy, W)),
    "xT copy only       ": (lambda x, dy: bar(x.T) + 0, (x, dy)),
    "dyT copy only      ": (lambda x, dy: bar(dy.T) + 0, (x, dy)),
}
medians = {}
for name, (f, args) in products.items():
    jitted = jax.jit(f)
    jax.block_until_ready(jitted(*args))
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(5):
            out = jitted(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / 5)
    medians[name] = np.median(times)
for name, t in medians.items():
    print(f"{name} {t * 1e3:7.2f} ms  {2 * T * D * F / t / 1e9:6.1f} GFLOP/s")
