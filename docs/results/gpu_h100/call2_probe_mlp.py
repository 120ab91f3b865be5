"""GPU probe (as run in call 2, reformatted for the linter).

GPT-2 124M's MLP (batch 64 x 1024 tokens) forward + backward: the old GELU (autodiff) against model.gelu (custom
VJP), under cuBLASLt with and without Triton GEMMs; prints the matmul epilogues in the compiled HLO and the time
per call.
"""

import re
import sys
import time

import jax
import jax.numpy as jnp

from gpt2_jax import model as model_lib

T = int(sys.argv[1]) if len(sys.argv) > 1 else 65536
cfg = model_lib.TransformerConfig(emb_dim=768, mlp_dim=3072, dtype="bfloat16")
x = jax.random.normal(jax.random.PRNGKey(0), (T // 1024, 1024, 768), jnp.bfloat16)
custom = model_lib.gelu
for name, fn in (("autodiff gelu", lambda h: jax.nn.gelu(h, approximate=True)), ("custom-vjp gelu", custom)):
    model_lib.gelu = fn
    mlp = model_lib.MLP(cfg, num_layers=12)
    params = mlp.init(jax.random.PRNGKey(1), x)
    for lt in (False, True):
        f = jax.jit(
            jax.grad(lambda p, x, mlp=mlp: jnp.sum(mlp.apply(p, x).astype(jnp.float32) ** 2), argnums=(0, 1)),
            compiler_options={"xla_gpu_enable_cublaslt": True, "xla_gpu_enable_triton_gemm": not lt},
        )
        c = f.lower(params, x).compile()
        hlo = c.as_text()
        ep = re.findall(r'"epilogue":"(\w+)"', hlo)
        fusions = len(re.findall(r"^\s*\S+ = \S+ fusion\(", hlo, re.M))
        for _ in range(5):
            out = c(params, x)
        jax.block_until_ready(out)
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(10):
                out = c(params, x)
            jax.block_until_ready(out)
            ts.append((time.perf_counter() - t0) / 10 * 1e3)
        ts.sort()
        print(
            f"{name:16s} cublaslt+no_triton_gemm={lt!s:5s} median {ts[2]:.3f} ms (min {ts[0]:.3f})  "
            f"fusions={fusions} epilogues={ep}",
            flush=True,
        )
model_lib.gelu = custom
