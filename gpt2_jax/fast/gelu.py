"""GPT-2's tanh GELU with a backward pass that keeps only its input (``model.gelu_impl="recompute"``)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jnp.ndarray

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@jax.custom_vjp
def gelu(x: Array) -> Array:
    """``jax.nn.gelu(x, approximate=True)``; the backward pass recomputes ``tanh`` from ``x``.

    Autodiff keeps the forward's ``tanh`` (and XLA more intermediates) for the
    backward pass, one ``[B, L, F]`` array each; this keeps ``x`` alone, and the
    forward expression stays the one XLA's GPU gemm rewriter fuses into a
    cuBLASLt bias + GELU epilogue.
    """
    return jax.nn.gelu(x, approximate=True)


def _gelu_fwd(x: Array) -> tuple[Array, Array]:
    return gelu(x), x


def _gelu_bwd(x: Array, g: Array) -> tuple[Array]:
    x32 = x.astype(jnp.float32)
    tanh = jnp.tanh(_SQRT_2_OVER_PI * (x32 + 0.044715 * x32 * x32 * x32))
    # d/dx [x * (1 + tanh(u)) / 2] with u = c (x + 0.044715 x^3).
    slope = 0.5 * (1 + tanh) + 0.5 * x32 * (1 - tanh * tanh) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x32 * x32)
    return ((g.astype(jnp.float32) * slope).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)
