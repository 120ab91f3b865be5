"""One family of pre-LN Transformer blocks, wired four ways.

``decoder_only``    GPT-2: one causal stack over ``input_tokens``.
``prefix_lm``       the same stack; the prefix (``bidirectional`` marker) is
                    attended to both ways, the rest causally (T5's prefix LM).
``encoder_decoder`` Vaswani et al. / T5: a bidirectional encoder over
                    ``encoder_input_tokens`` and a causal decoder whose blocks
                    also cross-attend to the encoder output.  Optionally the
                    encoder reuses the decoder's blocks (T5's "shared").
``encoder_only``    BERT-style: one bidirectional stack; the head predicts the
                    original token at every position, the loss weights pick the
                    corrupted ones (masked LM).

Everything else is common: learned absolute positions, GELU MLP, tied input and
output embeddings, GPT-2's initialisation (std 0.02, residual projections
scaled by 1/sqrt(2 * n_layer)) and GPT-2's parameter names (``wte``, ``wpe``,
``h_{i}/ln_1``, ``h_{i}/attn/c_attn``, ``h_{i}/attn/c_proj``, ``h_{i}/ln_2``,
``h_{i}/mlp/c_fc``, ``h_{i}/mlp/c_proj``, ``ln_f``), so GPT-2 checkpoints map
onto the decoder-only model one-to-one.  Cross-attention follows Hugging
Face's GPT-2 names (``ln_cross_attn``, ``crossattention/q_attn``,
``crossattention/c_attn``, ``crossattention/c_proj``).  The encoder of an
encoder-decoder model lives under ``encoder_wpe``, ``encoder_h_{i}`` and
``encoder_ln_f`` (with shared weights it reuses ``wpe`` and ``h_{i}``).

Tensor names carry their shapes: B batch, L decoder length, S encoder length,
D model width, N heads, H head width, F MLP width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2_jax import masks

Array = jnp.ndarray

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Static hyper-parameters of the model (see ``configs/default.py`` for each field)."""

    arch: str = "decoder_only"
    vocab_size: int = 256
    num_layers: int = 2
    num_encoder_layers: int = 2
    num_heads: int = 2
    emb_dim: int = 64
    mlp_dim: int = 256
    max_len: int = 128
    dropout_rate: float = 0.0
    dtype: str = "float32"
    attention_impl: str = "xla"
    share_encoder_decoder: bool = False
    positional: str = "learned"
    remat: bool = False
    vector_dim: int = 0
    use_bias: bool = True
    layer_norm_epsilon: float = 1e-5

    @classmethod
    def from_config(cls, model_config: Mapping[str, Any]) -> TransformerConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dict(model_config).items() if k in fields}
        if values.get("mlp_dim", 0) <= 0:
            values["mlp_dim"] = 4 * values["emb_dim"]
        if values.get("num_encoder_layers", 0) <= 0:
            values["num_encoder_layers"] = values["num_layers"]
        return cls(**values)

    @property
    def compute_dtype(self) -> Any:
        return DTYPES[self.dtype]

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.num_heads


def _dense(cfg: TransformerConfig, features: int, name: str, std: float = 0.02) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=cfg.use_bias,
        dtype=cfg.compute_dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(stddev=std),
        bias_init=nn.initializers.zeros,
        name=name,
    )


def _layer_norm(cfg: TransformerConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype, param_dtype=jnp.float32, name=name)


def _residual_std(num_layers: int) -> float:
    # GPT-2: "scale the weights of residual layers at initialization by 1/sqrt(N)"
    # where N counts residual branches, two per block.
    return 0.02 / math.sqrt(2 * num_layers)


def attend(
    q_BxLxNxH: Array, k_BxSxNxH: Array, v_BxSxNxH: Array, mask: Array | None, is_causal: bool, impl: str
) -> Array:
    """Scaled dot-product attention through ``jax.nn.dot_product_attention``.

    The softmax is computed in float32 whatever the compute dtype (JAX's XLA
    implementation upcasts the logits).  ``impl`` is ``"xla"`` or ``"cudnn"``
    (cuDNN flash attention, GPU only).
    """
    return jax.nn.dot_product_attention(
        q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask=mask, is_causal=is_causal, implementation=impl
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection (GPT-2's ``attn``)."""

    cfg: TransformerConfig
    num_layers: int

    @nn.compact
    def __call__(self, x_BxLxD: Array, mask: Array | None, is_causal: bool) -> Array:
        cfg = self.cfg
        B, L, D = x_BxLxD.shape
        qkv_BxLx3D = _dense(cfg, 3 * D, "c_attn")(x_BxLxD)
        qkv_BxLx3xNxH = qkv_BxLx3D.reshape(B, L, 3, cfg.num_heads, cfg.head_dim)
        q, k, v = (qkv_BxLx3xNxH[:, :, i] for i in range(3))
        out_BxLxNxH = attend(q, k, v, mask, is_causal, cfg.attention_impl)
        return _dense(cfg, D, "c_proj", _residual_std(self.num_layers))(out_BxLxNxH.reshape(B, L, D))


class CrossAttention(nn.Module):
    """Decoder queries over encoder keys/values (Hugging Face GPT-2's ``crossattention``)."""

    cfg: TransformerConfig
    num_layers: int

    @nn.compact
    def __call__(self, x_BxLxD: Array, enc_BxSxD: Array, mask: Array | None) -> Array:
        cfg = self.cfg
        B, L, D = x_BxLxD.shape
        S = enc_BxSxD.shape[1]
        q_BxLxNxH = _dense(cfg, D, "q_attn")(x_BxLxD).reshape(B, L, cfg.num_heads, cfg.head_dim)
        kv_BxSx2xNxH = _dense(cfg, 2 * D, "c_attn")(enc_BxSxD).reshape(B, S, 2, cfg.num_heads, cfg.head_dim)
        out_BxLxNxH = attend(q_BxLxNxH, kv_BxSx2xNxH[:, :, 0], kv_BxSx2xNxH[:, :, 1], mask, False, cfg.attention_impl)
        return _dense(cfg, D, "c_proj", _residual_std(self.num_layers))(out_BxLxNxH.reshape(B, L, D))


class MLP(nn.Module):
    """Position-wise feed-forward: D -> F -> D with GPT-2's tanh-approximated GELU."""

    cfg: TransformerConfig
    num_layers: int

    @nn.compact
    def __call__(self, x_BxLxD: Array) -> Array:
        h_BxLxF = nn.gelu(_dense(self.cfg, self.cfg.mlp_dim, "c_fc")(x_BxLxD), approximate=True)
        return _dense(self.cfg, x_BxLxD.shape[-1], "c_proj", _residual_std(self.num_layers))(h_BxLxF)


class Block(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)) [+ cross(ln_cross_attn(x))] + mlp(ln_2(x)).

    Cross-attention parameters are created only when the block is called with
    an encoder output, so encoder and decoder-only blocks have none.
    """

    cfg: TransformerConfig
    num_layers: int

    @nn.compact
    def __call__(
        self,
        x_BxLxD: Array,
        mask: Array | None,
        is_causal: bool,
        deterministic: bool,
        enc_BxSxD: Array | None = None,
        cross_mask: Array | None = None,
    ) -> Array:
        cfg = self.cfg
        dropout = nn.Dropout(cfg.dropout_rate)
        h = SelfAttention(cfg, self.num_layers, name="attn")(_layer_norm(cfg, "ln_1")(x_BxLxD), mask, is_causal)
        x_BxLxD = x_BxLxD + dropout(h, deterministic=deterministic)
        if enc_BxSxD is not None:
            h = CrossAttention(cfg, self.num_layers, name="crossattention")(
                _layer_norm(cfg, "ln_cross_attn")(x_BxLxD), enc_BxSxD, cross_mask
            )
            x_BxLxD = x_BxLxD + dropout(h, deterministic=deterministic)
        h = MLP(cfg, self.num_layers, name="mlp")(_layer_norm(cfg, "ln_2")(x_BxLxD))
        return x_BxLxD + dropout(h, deterministic=deterministic)


class Transformer(nn.Module):
    """The model.  ``model.apply({"params": p}, batch)`` returns float32 logits ``[B, L, V]``.

    With ``vector_dim > 0`` the batch also carries ``input_vectors [B, L, F]``
    (and ``encoder_input_vectors``), and the model returns one real value per
    position ``[B, L]`` instead of logits.

    ``batch`` follows :mod:`gpt2_jax.batch`.  Pass ``deterministic=False`` and
    ``rngs={"dropout": key}`` to train with dropout.
    """

    cfg: TransformerConfig

    def setup(self) -> None:
        cfg = self.cfg
        block = nn.remat(Block, static_argnums=(3, 4)) if cfg.remat else Block
        init = nn.initializers.normal(stddev=0.02)
        self.wte = nn.Embed(cfg.vocab_size, cfg.emb_dim, embedding_init=init, param_dtype=jnp.float32)
        self.h = [block(cfg, cfg.num_layers, name=f"h_{i}") for i in range(cfg.num_layers)]
        self.ln_f = _layer_norm(cfg, "ln_f")
        if cfg.positional == "learned":
            self.wpe = nn.Embed(cfg.max_len, cfg.emb_dim, embedding_init=init, param_dtype=jnp.float32)
        if cfg.arch == "encoder_decoder":
            if cfg.share_encoder_decoder:
                self.encoder_h = self.h
                self.encoder_wpe = self.wpe if cfg.positional == "learned" else None
            else:
                n = cfg.num_encoder_layers
                self.encoder_h = [block(cfg, n, name=f"encoder_h_{i}") for i in range(n)]
                if cfg.positional == "learned":
                    self.encoder_wpe = nn.Embed(cfg.max_len, cfg.emb_dim, embedding_init=init, param_dtype=jnp.float32)
            self.encoder_ln_f = _layer_norm(cfg, "encoder_ln_f")
        if cfg.vector_dim:
            # Real-valued inputs (in-context regression): a linear read-in added to
            # the token embedding, and a scalar read-out instead of the LM head.
            self.wve = _dense(cfg, cfg.emb_dim, "wve")
            self.value_head = _dense(cfg, 1, "value_head")
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def _embed(
        self,
        tokens_BxL: Array,
        positions_BxL: Array,
        wpe: nn.Embed | None,
        deterministic: bool,
        name: str,
        vectors_BxLxF: Array | None = None,
    ) -> Array:
        x_BxLxD = self.wte(tokens_BxL)
        if vectors_BxLxF is not None:
            x_BxLxD = x_BxLxD + self.wve(vectors_BxLxF)
        if wpe is not None:
            x_BxLxD = x_BxLxD + wpe(positions_BxL)
        # Gradients w.r.t. this zero "perturbation" are the gradients w.r.t. the
        # input embeddings; the causality tests read them.  A no-op otherwise.
        x_BxLxD = self.perturb(name, x_BxLxD)
        return self.dropout(x_BxLxD.astype(self.cfg.compute_dtype), deterministic=deterministic)

    def encode(self, batch: Mapping[str, Array], deterministic: bool = True) -> Array:
        """Encoder output ``[B, S, D]`` of an encoder-decoder model (final LayerNorm applied)."""
        cfg = self.cfg
        if cfg.arch != "encoder_decoder":
            raise ValueError(f"encode() is only defined for arch='encoder_decoder', not {cfg.arch!r}")
        wpe = self.encoder_wpe if cfg.positional == "learned" else None
        x = self._embed(
            batch["encoder_input_tokens"],
            batch["encoder_positions"],
            wpe,
            deterministic,
            "encoder_embeddings",
            batch.get("encoder_input_vectors"),
        )
        seg = batch["encoder_segment_ids"]
        mask = masks.self_attention_mask("bidirectional", x.shape[1], segment_ids=seg)
        for block in self.encoder_h:
            x = block(x, mask, False, deterministic)
        return self.encoder_ln_f(x)

    def __call__(self, batch: Mapping[str, Array], deterministic: bool = True, encoded: Array | None = None) -> Array:
        cfg = self.cfg
        arch = cfg.arch
        if arch == "encoder_decoder" and encoded is None:
            encoded = self.encode(batch, deterministic)
        tokens = batch["input_tokens"]
        L = tokens.shape[1]
        wpe = self.wpe if cfg.positional == "learned" else None
        x = self._embed(tokens, batch["positions"], wpe, deterministic, "embeddings", batch.get("input_vectors"))
        seg = batch.get("segment_ids")
        kind = {"decoder_only": "causal", "encoder_decoder": "causal", "prefix_lm": "prefix"}.get(arch, "bidirectional")
        # An unpacked, unpadded causal row needs no mask tensor: is_causal lets
        # fused kernels (cuDNN) skip the masked blocks.
        is_causal = kind == "causal" and seg is None
        mask = None if is_causal else masks.self_attention_mask(kind, L, seg, batch.get("bidirectional"))
        cross = None
        if arch == "encoder_decoder":
            dec_seg = seg if seg is not None else jnp.ones_like(tokens)
            cross = masks.cross_mask(dec_seg, batch["encoder_segment_ids"])
        for block in self.h:
            x = block(x, mask, is_causal, deterministic, encoded, cross)
        x = self.ln_f(x)
        if cfg.vector_dim:
            return self.value_head(x)[..., 0].astype(jnp.float32)
        # Tied output embedding; logits accumulate and stay in float32.
        return jnp.einsum(
            "bld,vd->blv",
            x,
            self.wte.embedding.astype(cfg.compute_dtype),
            preferred_element_type=jnp.float32,
        )
