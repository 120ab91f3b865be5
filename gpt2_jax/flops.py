"""Parameter counts, analytic FLOPs per example, and architecture matching (T5 section 3.2.2).

Convention (PaLM / nanoGPT): a matmul of an ``[n, a]`` by an ``[a, b]`` matrix
costs ``2nab`` FLOPs; attention scores and the weighted sum cost
``4 * T_q * T_k * d`` per layer, counted **in full** for causal masks too, as
the MFU convention ``6N + 12 L d T`` does (``causal_halved=True`` gives the
figure a kernel that skips the masked triangle needs: cuDNN's flash attention,
or :func:`gpt2_jax.attention.attend`'s block-causal path on the CPU).  Embedding lookups,
LayerNorms, softmaxes and activations are not counted.  A training step costs
3x the forward pass (backward = 2x forward).  For a decoder-only model this
is the familiar ``6N + 12 L d T`` per token.

Matching: an L+L encoder-decoder has about the parameters of a 2L decoder-only
model but the FLOPs of an L-layer one (T5 section 3.2.2), so every comparison
states which it matched.  :func:`match_layers` finds the layer count of
another architecture that matches a reference in parameters or FLOPs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from gpt2_jax import batch as batch_lib
from gpt2_jax.model import Transformer, TransformerConfig


def count_params(params: Any) -> dict[str, int]:
    """Exact counts of a parameter tree (arrays or shape structs): total, embedding, non-embedding."""
    flat = traverse_util.flatten_dict(params)
    total = sum(int(np.prod(v.shape)) for v in flat.values())
    embedding = sum(int(np.prod(v.shape)) for k, v in flat.items() if k[-1] == "embedding")
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def abstract_params(cfg: TransformerConfig, decoder_len: int, encoder_len: int = 0) -> Any:
    """The model's parameter shapes, without allocating them."""
    dummy = batch_lib.dummy(cfg.arch, 1, decoder_len, encoder_len, cfg.vector_dim)
    return jax.eval_shape(lambda: Transformer(cfg).init(jax.random.PRNGKey(0), dummy))["params"]


def params(cfg: TransformerConfig, decoder_len: int = 8, encoder_len: int = 0) -> dict[str, int]:
    """Exact parameter counts of a model config."""
    return count_params(abstract_params(cfg, decoder_len, encoder_len))


def _self_attention_block(T: int, D: int, F: int, causal_halved: bool) -> float:
    scores = 4 * T * T * D * (0.5 if causal_halved else 1.0)
    return 2 * T * D * 3 * D + scores + 2 * T * D * D + 2 * 2 * T * D * F


def _cross_attention(Tq: int, Tk: int, D: int) -> float:
    return 2 * Tq * D * D + 2 * Tk * D * 2 * D + 4 * Tq * Tk * D + 2 * Tq * D * D


# Dense (no sparsity) peak FLOP/s of one device by platform, a name within its ``device_kind`` and dtype,
# from the vendors' datasheets: MFU on accelerators is taken against these.  The first match wins, so
# the more specific names (H100 PCIe) come before the general ones (H100 SXM: "NVIDIA H100 80GB HBM3").
# TPU v5e and v6e report themselves as "TPU v5 lite" and "TPU v6 lite".
DEVICE_PEAKS: dict[tuple[str, str, str], float] = {
    ("gpu", "H100 PCIe", "bfloat16"): 756e12,
    ("gpu", "H100 PCIe", "float32"): 51e12,
    ("gpu", "H100 NVL", "bfloat16"): 835e12,
    ("gpu", "H100 NVL", "float32"): 60e12,
    ("gpu", "H100", "bfloat16"): 989e12,
    ("gpu", "H100", "float32"): 67e12,
    ("gpu", "H200", "bfloat16"): 989e12,
    ("gpu", "H200", "float32"): 67e12,
    ("gpu", "A100", "bfloat16"): 312e12,
    ("gpu", "A100", "float32"): 19.5e12,
    ("tpu", "v4", "bfloat16"): 275e12,
    ("tpu", "v5 lite", "bfloat16"): 197e12,
    ("tpu", "v5p", "bfloat16"): 459e12,
    ("tpu", "v6 lite", "bfloat16"): 918e12,
}


def datasheet_peak(device: Any, dtype: str) -> float | None:
    """Peak dense FLOP/s of ``device`` (a ``jax.Device``) computing in ``dtype``; None when it is not in the table."""
    kind = device.device_kind.lower()
    for (platform, name, peak_dtype), peak in DEVICE_PEAKS.items():
        if device.platform == platform and name.lower() in kind and peak_dtype == dtype:
            return peak
    return None


def forward_flops(cfg: TransformerConfig, decoder_len: int, encoder_len: int = 0, causal_halved: bool = False) -> float:
    """Forward-pass FLOPs of one example: ``decoder_len`` positions (and ``encoder_len`` encoder positions)."""
    D, F, V = cfg.emb_dim, cfg.mlp_dim, cfg.table_rows
    T = decoder_len
    causal = causal_halved and cfg.arch != "encoder_only"
    flops = cfg.num_layers * _self_attention_block(T, D, F, causal)
    if cfg.arch == "encoder_decoder":
        S = encoder_len
        flops += cfg.num_encoder_layers * _self_attention_block(S, D, F, False)
        flops += cfg.num_layers * _cross_attention(T, S, D)
    head = 2 * T * (1 if cfg.vector_dim else V) * D
    read_in = 2 * (T + (encoder_len if cfg.arch == "encoder_decoder" else 0)) * cfg.vector_dim * D
    return float(flops + head + read_in)


def cached_flops(cfg: TransformerConfig, new_len: int, keys: int, encoder_len: int = 0, logits_at: int = 1) -> float:
    """Forward FLOPs of ``new_len`` positions run against a key/value cache of ``keys`` positions.

    A prefill of ``P`` tokens is ``(P, P)``, one decoding step at context
    ``c`` is ``(1, c)``.  Encoder-decoder steps also attend over
    ``encoder_len`` encoder positions, whose keys/values :func:`encode_flops`
    counts.  The output layer runs at ``logits_at`` positions.
    """
    D, F = cfg.emb_dim, cfg.mlp_dim
    per_layer = 2 * new_len * D * 3 * D + 4 * new_len * keys * D + 2 * new_len * D * D + 2 * 2 * new_len * D * F
    if cfg.arch == "encoder_decoder":
        per_layer += 2 * new_len * D * D + 4 * new_len * encoder_len * D + 2 * new_len * D * D
    return float(cfg.num_layers * per_layer + 2 * logits_at * cfg.table_rows * D)


def encode_flops(cfg: TransformerConfig, encoder_len: int) -> float:
    """An encoder over ``encoder_len`` positions, plus every decoder layer's cross-attention keys/values of it."""
    D, F, S = cfg.emb_dim, cfg.mlp_dim, encoder_len
    return float(cfg.num_encoder_layers * _self_attention_block(S, D, F, False) + cfg.num_layers * 2 * S * D * 2 * D)


def train_flops(cfg: TransformerConfig, decoder_len: int, encoder_len: int = 0, causal_halved: bool = False) -> float:
    """Training FLOPs of one example (forward + backward = 3x forward)."""
    return 3.0 * forward_flops(cfg, decoder_len, encoder_len, causal_halved)


def xla_forward_flops(cfg: TransformerConfig, decoder_len: int, encoder_len: int = 0) -> float:
    """FLOPs of one example's forward pass as XLA's cost analysis of the compiled program counts them."""
    p = abstract_params(cfg, decoder_len, encoder_len)
    dummy = batch_lib.dummy(cfg.arch, 1, decoder_len, encoder_len or decoder_len)
    model = Transformer(cfg)
    compiled = jax.jit(lambda p, b: model.apply({"params": p}, b)).lower(p, dummy).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float(analysis["flops"])


@dataclasses.dataclass(frozen=True)
class Match:
    """The result of :func:`match_layers`."""

    config: TransformerConfig
    quantity: str  # "params" or "flops"
    reference: float
    achieved: float

    @property
    def mismatch(self) -> float:
        """Relative difference, achieved / reference - 1."""
        return self.achieved / self.reference - 1.0


def _quantity(cfg: TransformerConfig, match: str, decoder_len: int, encoder_len: int) -> float:
    if match == "params":
        return float(params(cfg, decoder_len, encoder_len)["total"])
    if match == "flops":
        return forward_flops(cfg, decoder_len, encoder_len)
    raise ValueError(f"match must be 'params' or 'flops', got {match!r}")


def match_layers(
    reference: TransformerConfig,
    reference_lens: tuple[int, int],
    arch: str,
    lens: tuple[int, int],
    match: str,
    max_layers: int = 64,
    **changes: Any,
) -> Match:
    """The layer count of ``arch`` whose parameters or FLOPs come closest to ``reference``'s.

    ``reference_lens`` and ``lens`` are the (decoder, encoder) lengths of one
    example under each architecture (an encoder-decoder splits the example
    between its stacks).  Encoder-decoder candidates have equal encoder and
    decoder depths (L+L).  Both quantities grow linearly with depth, so two
    depths are measured and the rest extrapolated; the chosen one is measured.
    """
    target = _quantity(reference, match, *reference_lens)

    def candidate(layers: int) -> TransformerConfig:
        return dataclasses.replace(reference, arch=arch, num_layers=layers, num_encoder_layers=layers, **changes)

    one, two = (_quantity(candidate(n), match, *lens) for n in (1, 2))
    per_layer = two - one
    best = min(range(1, max_layers + 1), key=lambda n: abs(one + (n - 1) * per_layer - target))
    cfg = candidate(best)
    return Match(cfg, match, target, _quantity(cfg, match, *lens))
