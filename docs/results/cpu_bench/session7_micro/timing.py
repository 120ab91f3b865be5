"""These micro-benchmarks' timer: the median of ``repeats`` calls of a jitted function, after one warm-up."""

import time

import jax
import numpy as np


def bench(name, fn, *args, flops=None, repeats=9, width=40, decimals=2):
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - start)
    t = np.median(times)
    rate = f"  {flops / t / 1e9:6.1f} GFLOP/s" if flops else ""
    print(f"{name:{width}s} {t * 1e3:7.{decimals}f} ms{rate}")
