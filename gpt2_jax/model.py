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
onto the decoder-only model one-to-one; ``c_attn``'s kernel is GPT-2's
``[D, 3D]`` with its query/key/value blocks on an axis of their own,
``[D, 3, D]``, so that tensor parallelism splits each part by heads.
Cross-attention follows Hugging Face's GPT-2 names (``ln_cross_attn``,
``crossattention/q_attn``, ``crossattention/c_attn``, ``crossattention/c_proj``).
The encoder of an encoder-decoder model lives under ``encoder_wpe``,
``encoder_h_{i}`` and ``encoder_ln_f`` (with shared weights it reuses ``wpe`` and
``h_{i}``).

Tensor names carry their shapes: B batch, L decoder length, S encoder length,
T cache length, Q new positions, D model width, N heads, H head width, F MLP
width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2_jax import losses, masks, positions
from gpt2_jax.attention import attend
from gpt2_jax.fast import cross_entropy as fast_cross_entropy
from gpt2_jax.fast import gelu as fast_gelu
from gpt2_jax.sharding import constrain, embedding_lookup

Array = jnp.ndarray

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# What a rematerialised block keeps from its forward pass (``jax.checkpoint`` policies): "full" keeps only
# the block's input; "dots" also keeps its dense layers' matmul outputs (MaxText's "minimal").
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


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
    share_encoder_decoder: bool = False
    positional: str = "learned"
    remat: bool = False
    remat_policy: str = "full"
    vector_dim: int = 0
    use_bias: bool = True
    layer_norm_epsilon: float = 1e-5
    loss_chunk_len: int = 128
    pad_vocab_to: int = 1
    # Opt-in speed paths (gpt2_jax.fast); the defaults are the plain forms.
    attention_impl: str = "xla"
    loss_impl: str = "chunked"
    gelu_impl: str = "autodiff"

    @classmethod
    def from_config(cls, model_config: Mapping[str, Any]) -> TransformerConfig:
        fields = {f.name for f in dataclasses.fields(cls)}  # config-only fields (init_from) are not the model's
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

    @property
    def table_rows(self) -> int:
        """Rows of the token table: the vocabulary rounded up to a multiple of ``pad_vocab_to``.

        The padded rows are never input tokens and never predicted (the logits
        mask them out); GPT-2's 50257 -> 50304 gives accelerators better matmul
        shapes and lets a ``tensor`` mesh axis split the vocabulary.
        """
        return -(-self.vocab_size // self.pad_vocab_to) * self.pad_vocab_to


def _dense(cfg: TransformerConfig, features: int, name: str, std: float = 0.02) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=cfg.use_bias,
        dtype=cfg.compute_dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(stddev=std),
        name=name,
    )


def _on_tokens(layer: nn.Module, x_BxLxD: Array) -> Array:
    """``layer`` over one token axis, ``[B, L, D] -> [B, L, F]``.

    A kernel gradient over ``[B, L, D]`` contracts two axes, which XLA:CPU runs
    as a transposing copy plus a slower matmul; over ``[B*L, D]`` it is one plain matmul.
    """
    B, L, D = x_BxLxD.shape
    return layer(x_BxLxD.reshape(B * L, D)).reshape(B, L, -1)


class FusedProjection(nn.Module):
    """GPT-2's fused ``c_attn``: kernel ``[D, parts, D]``, bias ``[parts, D]``; each part's projection ``[B, L, D]``.

    One matmul per part against its own block of the kernel: slicing one
    ``[..., parts, D]`` product would cost strided copies forward and backward.
    """

    cfg: TransformerConfig
    parts: int

    @nn.compact
    def __call__(self, x_BxLxD: Array) -> list[Array]:
        cfg, D = self.cfg, self.cfg.emb_dim
        dt = cfg.compute_dtype
        kernel = self.param("kernel", nn.initializers.normal(stddev=0.02), (D, self.parts, D), jnp.float32)
        B, L, _ = x_BxLxD.shape
        x_TxD = x_BxLxD.reshape(B * L, D).astype(dt)
        outs = [x_TxD @ kernel[:, i].astype(dt) for i in range(self.parts)]
        if cfg.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.parts, D), jnp.float32)
            outs = [out + bias[i].astype(dt) for i, out in enumerate(outs)]
        return [out.reshape(B, L, D) for out in outs]


def _layer_norm(cfg: TransformerConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype, param_dtype=jnp.float32, name=name)


def _residual_std(num_layers: int) -> float:
    # GPT-2: "scale the weights of residual layers at initialization by 1/sqrt(N)", N residual branches.
    return 0.02 / math.sqrt(2 * num_layers)


def _shard_residual(x_BxLxD: Array) -> Array:
    """Sharding hint for the residual stream under a mesh: rows over the batch axes, width whole."""
    return constrain(x_BxLxD, "batch", None, None)


def _split_heads(x_BxLxD: Array, num_heads: int) -> Array:
    """``[B, L, D] -> [B, L, N, H]``, the heads pinned to the ``tensor`` mesh axis."""
    B, L, D = x_BxLxD.shape
    return constrain(x_BxLxD.reshape(B, L, num_heads, D // num_heads), "batch", None, "heads", None)


Cache = dict[str, Array]  # one layer's key/value cache: {"k", "v"} [B, T, N, H]


def write_cache(cache_BxTxNxH: Array, new_BxQxNxH: Array, index_B: Array) -> Array:
    """Write ``Q`` new positions into each row's cache starting at that row's ``index``."""
    return jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice(c, u.astype(c.dtype), (i, 0, 0)))(
        cache_BxTxNxH, new_BxQxNxH, index_B
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention with GPT-2's fused query/key/value projection ``c_attn``.

    ``mask`` None is the causal mask.  ``positions`` rotate queries and keys
    under RoPE; ``bias`` (T5's relative positions) is added to the logits.
    With a ``cache`` the new keys/values are written at ``cache_index_B`` and
    the queries attend over the whole cache (``mask`` is then ``[B, 1, Q, T]``).
    """

    cfg: TransformerConfig
    num_layers: int

    @nn.compact
    def __call__(
        self,
        x_BxLxD: Array,
        mask: Array | None,
        positions_BxL: Array,
        bias_BxNxLxS: Array | None = None,
        cache: Cache | None = None,
        cache_index_B: Array | None = None,
    ) -> tuple[Array, Cache | None]:
        cfg = self.cfg
        B, L, D = x_BxLxD.shape
        q, k, v = (_split_heads(t, cfg.num_heads) for t in FusedProjection(cfg, 3, name="c_attn")(x_BxLxD))
        if cfg.positional == "rope":
            q, k = positions.rope(q, positions_BxL), positions.rope(k, positions_BxL)
        if cache is not None:
            cache = {"k": write_cache(cache["k"], k, cache_index_B), "v": write_cache(cache["v"], v, cache_index_B)}
            k, v = cache["k"].astype(q.dtype), cache["v"].astype(q.dtype)
        out_BxLxD = attend(q, k, v, mask, cfg.attention_impl, bias_BxNxLxS).reshape(B, L, D)
        return _on_tokens(_dense(cfg, D, "c_proj", _residual_std(self.num_layers)), out_BxLxD), cache


class CrossAttention(nn.Module):
    """Decoder queries over encoder keys/values (Hugging Face GPT-2's ``crossattention``).

    :meth:`kv` projects the encoder output once; decoding reuses it every step.
    """

    cfg: TransformerConfig
    num_layers: int

    def setup(self) -> None:
        D = self.cfg.emb_dim
        self.q_attn = _dense(self.cfg, D, "q_attn")
        self.c_attn = FusedProjection(self.cfg, 2)
        self.c_proj = _dense(self.cfg, D, "c_proj", _residual_std(self.num_layers))

    def kv(self, enc_BxSxD: Array) -> tuple[Array, Array]:
        """Keys and values ``[B, S, N, H]`` of an encoder output."""
        k, v = self.c_attn(enc_BxSxD)
        return _split_heads(k, self.cfg.num_heads), _split_heads(v, self.cfg.num_heads)

    def __call__(self, x_BxLxD: Array, kv: tuple[Array, Array], mask: Array) -> Array:
        B, L, D = x_BxLxD.shape
        q_BxLxNxH = _split_heads(_on_tokens(self.q_attn, x_BxLxD), self.cfg.num_heads)
        out_BxLxD = attend(q_BxLxNxH, kv[0], kv[1], mask, self.cfg.attention_impl).reshape(B, L, D)
        return _on_tokens(self.c_proj, out_BxLxD)


class MLP(nn.Module):
    """Position-wise feed-forward: D -> F -> D with GPT-2's tanh-approximated GELU."""

    cfg: TransformerConfig
    num_layers: int

    @nn.compact
    def __call__(self, x_BxLxD: Array) -> Array:
        cfg = self.cfg
        B, L, D = x_BxLxD.shape
        h_TxF = constrain(_dense(cfg, cfg.mlp_dim, "c_fc")(x_BxLxD.reshape(B * L, D)), "batch", "mlp")
        h_TxF = fast_gelu.gelu(h_TxF) if cfg.gelu_impl == "recompute" else jax.nn.gelu(h_TxF, approximate=True)
        y_TxD = _dense(cfg, D, "c_proj", _residual_std(self.num_layers))(h_TxF)  # one token axis: see _on_tokens
        return y_TxD.reshape(B, L, D)


class Block(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)) [+ cross(ln_cross_attn(x))] + mlp(ln_2(x)).

    Cross-attention parameters are created only when the block is used with an
    encoder (``cross_kv``), so encoder and decoder-only blocks have none.
    """

    cfg: TransformerConfig
    num_layers: int

    def setup(self) -> None:
        cfg, n = self.cfg, self.num_layers
        self.ln_1 = _layer_norm(cfg, "ln_1")
        self.attn = SelfAttention(cfg, n)
        self.ln_cross_attn = _layer_norm(cfg, "ln_cross_attn")
        self.crossattention = CrossAttention(cfg, n)
        self.ln_2 = _layer_norm(cfg, "ln_2")
        self.mlp = MLP(cfg, n)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def cross_kv(self, enc_BxSxD: Array) -> tuple[Array, Array]:
        """This block's cross-attention keys and values of an encoder output."""
        return self.crossattention.kv(enc_BxSxD)

    def __call__(
        self,
        x_BxLxD: Array,
        mask: Array | None,
        deterministic: bool,
        *,
        positions_BxL: Array,
        bias_BxNxLxS: Array | None = None,
        cross_kv: tuple[Array, Array] | None = None,
        cross_mask: Array | None = None,
        cache: Cache | None = None,
        cache_index_B: Array | None = None,
    ) -> tuple[Array, Cache | None]:
        """``mask`` None is the causal mask; ``deterministic`` turns dropout off (positional: remat keeps it static)."""
        h, cache = self.attn(self.ln_1(x_BxLxD), mask, positions_BxL, bias_BxNxLxS, cache, cache_index_B)
        x_BxLxD = x_BxLxD + self.dropout(h, deterministic=deterministic)
        if cross_kv is not None:
            h = self.crossattention(self.ln_cross_attn(x_BxLxD), cross_kv, cross_mask)
            x_BxLxD = x_BxLxD + self.dropout(h, deterministic=deterministic)
        h = self.mlp(self.ln_2(x_BxLxD))
        return _shard_residual(x_BxLxD + self.dropout(h, deterministic=deterministic)), cache


def _unrestricted_if_none(mask: Array | None, length: int) -> Array:
    """A bidirectional stack's mask: ``None`` (no padding, no packing) becomes all-True; None means causal here."""
    return jnp.ones((1, 1, length, length), bool) if mask is None else mask


class Transformer(nn.Module):
    """The model.  ``model.apply({"params": p}, batch)`` returns float32 logits ``[B, L, V]``;
    ``model.apply({"params": p}, batch, method=Transformer.loss)`` the loss that training and evaluation take.

    With ``vector_dim > 0`` the batch also carries ``input_vectors [B, L, F]``
    (and ``encoder_input_vectors``), and the model returns one real value per
    position ``[B, L]`` instead of logits.

    ``batch`` follows :mod:`gpt2_jax.batch`.  Pass ``deterministic=False`` and
    ``rngs={"dropout": key}`` to train with dropout.
    """

    cfg: TransformerConfig

    def setup(self) -> None:
        cfg = self.cfg
        block = nn.remat(Block, static_argnums=(3,), policy=REMAT_POLICIES[cfg.remat_policy]) if cfg.remat else Block
        init = nn.initializers.normal(stddev=0.02)
        self.wte = nn.Embed(cfg.table_rows, cfg.emb_dim, embedding_init=init, param_dtype=jnp.float32)
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
        if cfg.positional == "t5_bias":
            # One [buckets, heads] table per stack, shared by its layers (T5).
            self.relative_bias = nn.Embed(
                positions.T5_BUCKETS, cfg.num_heads, embedding_init=init, name="relative_bias"
            )
            if cfg.arch == "encoder_decoder":
                self.encoder_relative_bias = (
                    self.relative_bias
                    if cfg.share_encoder_decoder
                    else nn.Embed(
                        positions.T5_BUCKETS, cfg.num_heads, embedding_init=init, name="encoder_relative_bias"
                    )
                )
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
        x_BxLxD = embedding_lookup(self.wte.embedding, tokens_BxL, "vocab")
        if vectors_BxLxF is not None:
            x_BxLxD = x_BxLxD + self.wve(vectors_BxLxF)
        if wpe is not None:
            x_BxLxD = x_BxLxD + embedding_lookup(wpe.embedding, positions_BxL, None)
        # Gradients w.r.t. this zero "perturbation" are the gradients w.r.t. the
        # input embeddings; the causality tests read them.  A no-op otherwise.
        x_BxLxD = self.perturb(name, x_BxLxD)
        return _shard_residual(self.dropout(x_BxLxD.astype(self.cfg.compute_dtype), deterministic=deterministic))

    def _positions_table(self, encoder: bool) -> nn.Embed | None:
        if self.cfg.positional != "learned":
            return None
        return self.encoder_wpe if encoder else self.wpe

    def _self_attention_kind(self) -> str:
        """The main stack's mask kind (``masks.self_attention_mask``): causal, prefix or bidirectional."""
        kinds = {"decoder_only": "causal", "encoder_decoder": "causal", "prefix_lm": "prefix"}
        return kinds.get(self.cfg.arch, "bidirectional")

    def _relative_bias(
        self, encoder: bool, query_positions_BxL: Array, key_positions_BxS: Array, bidirectional: bool
    ) -> Array | None:
        """T5's relative-position logit biases ``[B, N, L, S]`` of a stack (None under other schemes)."""
        if self.cfg.positional != "t5_bias":
            return None
        table = self.encoder_relative_bias if encoder else self.relative_bias
        return positions.t5_bias(table.embedding, query_positions_BxL, key_positions_BxS, bidirectional)

    def encode(self, batch: Mapping[str, Array], deterministic: bool = True) -> Array:
        """Encoder output ``[B, S, D]`` of an encoder-decoder model (final LayerNorm applied)."""
        cfg = self.cfg
        if cfg.arch != "encoder_decoder":
            raise ValueError(f"encode() is only defined for arch='encoder_decoder', not {cfg.arch!r}")
        x = self._embed(
            batch["encoder_input_tokens"],
            batch["encoder_positions"],
            self._positions_table(encoder=True),
            deterministic,
            "encoder_embeddings",
            batch.get("encoder_input_vectors"),
        )
        mask = masks.self_attention_mask("bidirectional", x.shape[1], segment_ids=batch["encoder_segment_ids"])
        mask = _unrestricted_if_none(mask, x.shape[1])
        pos = batch["encoder_positions"]
        bias = self._relative_bias(True, pos, pos, bidirectional=True)
        for block in self.encoder_h:
            x, _ = block(x, mask, deterministic, positions_BxL=pos, bias_BxNxLxS=bias)
        return self.encoder_ln_f(x)

    def cross_kv(self, encoded_BxSxD: Array) -> list[tuple[Array, Array]]:
        """Every decoder block's cross-attention keys/values of an encoder output (computed once per source)."""
        return [block.cross_kv(encoded_BxSxD) for block in self.h]

    def __call__(self, batch: Mapping[str, Array], deterministic: bool = True, encoded: Array | None = None) -> Array:
        """Float32 logits ``[B, L, V]`` (values ``[B, L]`` with ``vector_dim``) at every position of ``batch``."""
        return self._head(self.features(batch, deterministic, encoded))

    def loss(self, batch: Mapping[str, Array], deterministic: bool = True) -> tuple[Array, Array]:
        """``(loss_sum, predictions_BxL)`` against the batch's targets: what training and evaluation take.

        Token targets: the weighted cross-entropy sum of the tied output layer
        and the argmax tokens.  Value targets: the weighted squared error and
        the predicted values.
        """
        cfg = self.cfg
        x_BxLxD = self.features(batch, deterministic)
        weights_BxL = batch["loss_weights"]
        if cfg.vector_dim:
            values_BxL = self._head(x_BxLxD)
            return losses.squared_error(values_BxL, batch["target_values"], weights_BxL), values_BxL
        cross_entropy = (
            fast_cross_entropy.fused_tied_cross_entropy if cfg.loss_impl == "fused" else losses.tied_cross_entropy
        )
        return cross_entropy(
            x_BxLxD.astype(cfg.compute_dtype),
            self.wte.embedding.astype(cfg.compute_dtype),
            batch["target_tokens"],
            weights_BxL,
            cfg.loss_chunk_len,
            cfg.vocab_size,
        )

    def features(self, batch: Mapping[str, Array], deterministic: bool = True, encoded: Array | None = None) -> Array:
        """The stack's output after the final LayerNorm ``[B, L, D]``: what the output layer reads."""
        cfg = self.cfg
        arch = cfg.arch
        if arch == "encoder_decoder" and encoded is None:
            encoded = self.encode(batch, deterministic)
        tokens = batch["input_tokens"]
        L = tokens.shape[1]
        x = self._embed(
            tokens,
            batch["positions"],
            self._positions_table(False),
            deterministic,
            "embeddings",
            batch.get("input_vectors"),
        )
        seg = batch.get("segment_ids")
        kind = self._self_attention_kind()
        if kind == "causal" and seg is None:
            mask = None  # no mask tensor: fused attention kernels skip the masked blocks
        else:
            mask = _unrestricted_if_none(masks.self_attention_mask(kind, L, seg, batch.get("bidirectional")), L)
        cross_kv, cross_mask = [None] * len(self.h), None
        if arch == "encoder_decoder":
            dec_seg = seg if seg is not None else jnp.ones_like(tokens)
            cross_mask = masks.cross_mask(dec_seg, batch["encoder_segment_ids"])
            cross_kv = self.cross_kv(encoded)
        pos = batch["positions"]
        bias = self._relative_bias(False, pos, pos, bidirectional=kind != "causal")
        for block, kv in zip(self.h, cross_kv, strict=True):
            x, _ = block(
                x, mask, deterministic, positions_BxL=pos, bias_BxNxLxS=bias, cross_kv=kv, cross_mask=cross_mask
            )
        return self.ln_f(x)

    def cached_forward(
        self,
        tokens_BxQ: Array,
        positions_BxQ: Array,
        mask_Bx1xQxT: Array,
        cache: list[Cache],
        cache_index_B: Array,
        cross_kv: list[tuple[Array, Array]] | None = None,
        cross_mask: Array | None = None,
        logits_at_B: Array | None = None,
    ) -> tuple[Array, list[Cache]]:
        """Run ``Q`` new positions against each layer's key/value cache (prefill: the prompt; then one token).

        The new keys/values are written at ``cache_index_B`` (per row).  Returns
        the new positions' logits ``[B, Q, V]`` -- or, with ``logits_at_B``, one
        position's per row ``[B, 1, V]`` (prefill needs only the last prompt
        position, and the output layer over all of them would cost ``2 P V D``
        FLOPs and a ``[B, P, V]`` array) -- and the updated caches.
        """
        x = self._embed(tokens_BxQ, positions_BxQ, self._positions_table(False), True, "embeddings")
        kvs = cross_kv if cross_kv is not None else [None] * len(self.h)
        # A row's cache slot t holds its position t (prompts and continuations are written from slot 0).
        B, T = tokens_BxQ.shape[0], cache[0]["k"].shape[1]
        cache_positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        bidirectional = self._self_attention_kind() != "causal"
        bias = self._relative_bias(False, positions_BxQ, cache_positions_BxT, bidirectional)
        new_cache = []
        for block, layer_cache, kv in zip(self.h, cache, kvs, strict=True):
            x, layer_cache = block(
                x,
                mask_Bx1xQxT,
                True,
                positions_BxL=positions_BxQ,
                bias_BxNxLxS=bias,
                cross_kv=kv,
                cross_mask=cross_mask,
                cache=layer_cache,
                cache_index_B=cache_index_B,
            )
            new_cache.append(layer_cache)
        if logits_at_B is not None:
            x = jnp.take_along_axis(x, logits_at_B[:, None, None], axis=1)
        return self._head(self.ln_f(x)), new_cache

    def _head(self, x_BxLxD: Array) -> Array:
        """Logits (or values) of the final LayerNorm's output."""
        cfg = self.cfg
        if cfg.vector_dim:
            return constrain(self.value_head(x_BxLxD)[..., 0].astype(jnp.float32), "batch", None)
        logits_BxLxV = losses.tied_logits(
            x_BxLxD.astype(cfg.compute_dtype), self.wte.embedding.astype(cfg.compute_dtype)
        )
        return constrain(losses.mask_padded_vocab(logits_BxLxV, cfg.vocab_size), "batch", None, "vocab")
