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
onto the decoder-only model one-to-one (``c_attn`` reshaped: see
``FusedQKV``).  Cross-attention follows Hugging Face's GPT-2 names
(``ln_cross_attn``, ``crossattention/q_attn``, ``crossattention/c_attn``,
``crossattention/c_proj``).  The encoder of an encoder-decoder model lives under ``encoder_wpe``, ``encoder_h_{i}`` and
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

from gpt2_jax import losses, masks
from gpt2_jax.attention import attend
from gpt2_jax.sharding import constrain, take_rows

Array = jnp.ndarray

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# What a rematerialised block keeps from its forward pass (``remat_policy``; ``jax.checkpoint`` policies):
# "full" keeps only the block's input and recomputes the rest; "dots" also keeps the outputs of the
# matmuls without batch dimensions (every dense layer: they run over one token axis, see ``Dense``) and
# recomputes attention, LayerNorm, GELU and the residual adds -- MaxText's "minimal".
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
    attention_impl: str = "xla"
    share_encoder_decoder: bool = False
    positional: str = "learned"
    remat: bool = False
    remat_policy: str = "full"
    vector_dim: int = 0
    use_bias: bool = True
    layer_norm_epsilon: float = 1e-5
    loss_chunk_len: int = 128
    pad_vocab_to: int = 1
    logits_dtype: str = "float32"

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

        The padded rows are never input tokens and never predicted: the logits
        mask them out.  Padding (GPT-2: 50257 -> 50304) gives the output layer
        matmul shapes that accelerators run faster and lets a ``tensor`` mesh axis
        split the vocabulary.
        """
        return -(-self.vocab_size // self.pad_vocab_to) * self.pad_vocab_to


class Dense(nn.Module):
    """``x @ kernel + bias`` over the last axis, with ``nn.Dense``'s parameters (``kernel [D, F]``, ``bias [F]``).

    The leading axes are flattened into one token axis before the matmul.
    With ``[B, L, D]`` inputs the weight gradient contracts two axes (B and
    L), which XLA:CPU lowers as a transposing copy of the output gradient plus
    a matmul with both operands transposed, at half the matmul rate; over one
    token axis it is a plain ``x^T dy`` (measured: 8-10% less time for the
    whole train step on the CPU).  Elsewhere the reshape is free.

    ``input_bias_D`` (a vector the caller would have added to every row of
    ``x``) is applied as ``x @ kernel + (input_bias @ kernel + bias)``: a
    ``[F]`` vector folded into the bias, not a pass over ``x``.
    """

    features: int
    cfg: TransformerConfig
    std: float = 0.02

    @nn.compact
    def __call__(self, x_BxLxD: Array, input_bias_D: Array | None = None) -> Array:
        cfg = self.cfg
        D = x_BxLxD.shape[-1]
        kernel_DxF = self.param("kernel", nn.initializers.normal(stddev=self.std), (D, self.features), jnp.float32)
        kernel_DxF = kernel_DxF.astype(cfg.compute_dtype)
        x_TxD = x_BxLxD.reshape(-1, D).astype(cfg.compute_dtype)
        y_TxF = jnp.dot(x_TxD, kernel_DxF)
        bias_F = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32) if cfg.use_bias else None
        if input_bias_D is not None:
            folded_F = jnp.dot(input_bias_D.astype(cfg.compute_dtype), kernel_DxF, preferred_element_type=jnp.float32)
            bias_F = folded_F if bias_F is None else bias_F + folded_F
        if bias_F is not None:
            y_TxF = y_TxF + bias_F.astype(cfg.compute_dtype)
        return y_TxF.reshape(*x_BxLxD.shape[:-1], self.features)


def _dense(cfg: TransformerConfig, features: int, name: str, std: float = 0.02) -> Dense:
    return Dense(features, cfg, std, name=name)


def _layer_norm(cfg: TransformerConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype, param_dtype=jnp.float32, name=name)


def _rows(x_BxLxD: Array) -> Array:
    """The residual stream under a mesh: rows split over the batch axes, the width whole (see ``sharding``)."""
    return constrain(x_BxLxD, "batch", None, None)


def _heads(x_BxLxNxH: Array) -> Array:
    """Per-head activations under a mesh: rows over the batch axes, heads over ``tensor``."""
    return constrain(x_BxLxNxH, "batch", None, "heads", None)


def _residual_std(num_layers: int) -> float:
    # GPT-2: "scale the weights of residual layers at initialization by 1/sqrt(N)"
    # where N counts residual branches, two per block.
    return 0.02 / math.sqrt(2 * num_layers)


@jax.custom_vjp
def tied_logits(x_BxLxD: Array, embedding_VxD: Array) -> Array:
    """Float32 logits ``[B, L, V]`` of compute-dtype activations against the token table.

    The backward pass rounds the float32 cotangent to the compute dtype before
    its two matmuls.  Without this JAX would multiply a float32 ``[B, L, V]``
    cotangent by a bf16 operand, which XLA runs as a float32 matmul: the
    largest matmuls of a GPT-2 step (a quarter of its FLOPs) at a fraction of
    the bf16 rate.  In float32 compute nothing changes.  Training takes
    :func:`losses.tied_cross_entropy` instead, which never forms the whole
    logits; this serves code that differentiates the logits themselves.
    """
    B, L, D = x_BxLxD.shape
    # One token axis, as in Dense: the embedding gradient then contracts one axis.
    x_TxD = x_BxLxD.reshape(B * L, D)
    return jnp.einsum("td,vd->tv", x_TxD, embedding_VxD, preferred_element_type=jnp.float32).reshape(B, L, -1)


def _tied_logits_fwd(x_BxLxD: Array, embedding_VxD: Array) -> tuple[Array, tuple[Array, Array]]:
    return tied_logits(x_BxLxD, embedding_VxD), (x_BxLxD, embedding_VxD)


def _tied_logits_bwd(res: tuple[Array, Array], g_BxLxV: Array) -> tuple[Array, Array]:
    x_BxLxD, embedding_VxD = res
    B, L, D = x_BxLxD.shape
    g_TxV = g_BxLxV.reshape(B * L, -1).astype(x_BxLxD.dtype)
    x_TxD = x_BxLxD.reshape(B * L, D)
    dx_TxD = jnp.einsum("tv,vd->td", g_TxV, embedding_VxD, preferred_element_type=jnp.float32)
    # As the fused loss: [D, T] @ [T, V], transposed behind a barrier (see losses.transposed_embedding_grad).
    demb_VxD = jax.lax.optimization_barrier(losses.transposed_embedding_grad(x_TxD, g_TxV)).T
    return dx_TxD.reshape(B, L, D).astype(x_BxLxD.dtype), demb_VxD.astype(embedding_VxD.dtype)


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


Cache = dict[str, Array]  # one layer's key/value cache: {"k", "v"} [B, L_max, N, H]


def write_cache(cache_BxTxNxH: Array, new_BxQxNxH: Array, index_B: Array) -> Array:
    """Write ``Q`` new positions into each row's cache starting at that row's ``index``."""
    return jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice(c, u.astype(c.dtype), (i, 0, 0)))(
        cache_BxTxNxH, new_BxQxNxH, index_B
    )


class FusedQKV(nn.Module):
    """GPT-2's fused attention input projection: one ``[D, n, D]`` kernel (and ``[n, D]`` bias), one matmul per part.

    ``parts=3``: queries, keys and values (self-attention's ``c_attn``);
    ``parts=2``: keys and values (cross-attention's ``c_attn``, whose queries
    come from ``q_attn``).  The kernel is GPT-2's ``[D, nD]`` ``c_attn`` with
    its column blocks on an axis of their own (``hf_gpt2`` reshapes it), so
    that tensor parallelism can split every part over ``tensor`` (each device
    holds its heads' queries, keys and values; see ``sharding.param_spec``):
    split along one ``nD`` axis, a device would hold all queries and some keys,
    and every step would move kernel slices between devices.  Multiplying by
    each part's kernel instead of slicing one ``[B, L, nD]`` product keeps the
    backward pass free of the strided gather/scatter that slicing costs (about
    20% of an attention block on CPU).

    Only the query bias is added to its product.  The key bias adds ``q . b_k``
    to every score of a query's row, and softmax is invariant to that: it
    cannot change the attention output and is left out (its gradient is zero
    either way).  Attention rows sum to one, so the value bias comes through
    attention unchanged, ``attn(q, k, v + b_v) = attn(q, k, v) + b_v``: it is
    added after attention, folded into the output projection's bias
    (:meth:`value_bias` for ``Dense``'s ``input_bias_D``).  That is two
    ``[T, D]`` passes fewer per attention layer forward and two bias-gradient
    reductions fewer backward (Namazifar et al. 2023, "Role of Bias Terms in
    Dot-Product Attention").  The parameters are GPT-2's, unchanged.
    """

    cfg: TransformerConfig
    parts: int = 3

    def setup(self) -> None:
        D, n = self.cfg.emb_dim, self.parts
        self.kernel = self.param("kernel", nn.initializers.normal(stddev=0.02), (D, n, D), jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros, (n, D), jnp.float32) if self.cfg.use_bias else None

    def __call__(self, x_BxLxD: Array) -> list[Array]:
        """The ``parts`` projections ``[B, L, D]`` of ``x``: queries (with their bias), keys, values (without)."""
        cfg = self.cfg
        D = cfg.emb_dim
        x_TxD = x_BxLxD.reshape(-1, D).astype(cfg.compute_dtype)  # one token axis: see Dense
        out = [jnp.dot(x_TxD, self.kernel[:, i].astype(cfg.compute_dtype)) for i in range(self.parts)]
        if self.parts == 3 and self.bias is not None:
            out[0] = out[0] + self.bias[0].astype(cfg.compute_dtype)
        return [y_TxD.reshape(*x_BxLxD.shape[:-1], D) for y_TxD in out]

    def value_bias(self) -> Array | None:
        """``b_v [D]``, to be added after attention (None without biases)."""
        return None if self.bias is None else self.bias[-1]


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection (GPT-2's ``attn``).

    With a ``cache`` the new keys/values are written at ``index_B`` and the
    queries attend over the whole cache (``mask`` is then ``[B, 1, Q, L_max]``).
    """

    cfg: TransformerConfig
    num_layers: int

    @nn.compact
    def __call__(
        self,
        x_BxLxD: Array,
        mask: Array | None,
        is_causal: bool,
        cache: Cache | None = None,
        index_B: Array | None = None,
        prefix_causal: bool = False,
    ) -> tuple[Array, Cache | None]:
        cfg = self.cfg
        B, L, D = x_BxLxD.shape
        c_attn = FusedQKV(cfg, name="c_attn")
        q, k, v = (_heads(t.reshape(B, L, cfg.num_heads, cfg.head_dim)) for t in c_attn(x_BxLxD))
        if cache is not None:
            cache = {"k": write_cache(cache["k"], k, index_B), "v": write_cache(cache["v"], v, index_B)}
            k, v = cache["k"].astype(q.dtype), cache["v"].astype(q.dtype)
        out_BxLxD = _heads(attend(q, k, v, mask, is_causal, cfg.attention_impl, prefix_causal)).reshape(B, L, D)
        c_proj = _dense(cfg, D, "c_proj", _residual_std(self.num_layers))
        return c_proj(out_BxLxD, input_bias_D=c_attn.value_bias()), cache


class CrossAttention(nn.Module):
    """Decoder queries over encoder keys/values (Hugging Face GPT-2's ``crossattention``).

    :meth:`kv` projects the encoder output once; decoding reuses it every step.
    """

    cfg: TransformerConfig
    num_layers: int

    def setup(self) -> None:
        D = self.cfg.emb_dim
        self.q_attn = _dense(self.cfg, D, "q_attn")
        self.c_attn = FusedQKV(self.cfg, parts=2)
        self.c_proj = _dense(self.cfg, D, "c_proj", _residual_std(self.num_layers))

    def kv(self, enc_BxSxD: Array) -> tuple[Array, Array]:
        """Keys and values of an encoder output, without their biases (see ``FusedQKV``)."""
        cfg = self.cfg
        B, S, _ = enc_BxSxD.shape
        k, v = (_heads(t.reshape(B, S, cfg.num_heads, cfg.head_dim)) for t in self.c_attn(enc_BxSxD))
        return k, v

    def __call__(self, x_BxLxD: Array, kv: tuple[Array, Array], mask: Array | None) -> Array:
        cfg = self.cfg
        B, L, D = x_BxLxD.shape
        q_BxLxNxH = _heads(self.q_attn(x_BxLxD).reshape(B, L, cfg.num_heads, cfg.head_dim))
        out_BxLxD = _heads(attend(q_BxLxNxH, kv[0], kv[1], mask, False, cfg.attention_impl)).reshape(B, L, D)
        return self.c_proj(out_BxLxD, input_bias_D=self.c_attn.value_bias())


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@jax.custom_vjp
def gelu(x: Array) -> Array:
    """GPT-2's tanh-approximated GELU, ``jax.nn.gelu(x, approximate=True)``, whose backward pass keeps only ``x``.

    Automatic differentiation keeps the forward's ``tanh`` (and XLA more of its
    intermediates) for the backward pass, one ``[T, F]`` array each; here the
    backward pass recomputes them from ``x`` inside its elementwise kernel.
    GPT-2 124M, batch 64 x 1024, bf16, one H100: XLA's peak-memory estimate of
    the train step 27.4 -> 22.9 GB, tokens/s +1-2%; the CPU bench shape: 914 ->
    842 MB, tokens/s unchanged within noise.

    The forward pass is ``jax.nn.gelu``'s expression unchanged, which XLA's
    GPU gemm rewriter recognises on a matmul's output: under
    ``xla_gpu_enable_cublaslt=true,xla_gpu_enable_triton_gemm=false`` bias +
    GELU run as the matmul's cuBLASLt epilogue (``BIAS_GELU_AUX``).  The
    rewriter needs every intermediate of the expression to have one user,
    which autodiff's reuse of ``tanh`` breaks; the backward pass computes in
    float32, an expression CSE does not merge with the forward's.  With Triton
    GEMMs off alone (``configs/gpt2_124m.py``), XLA's autotuner picked
    cuBLASLt and this epilogue by itself in an H100 profile of a variant of
    this model with the same MLP (``docs/results/gpu_h100/session7``).
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


class MLP(nn.Module):
    """Position-wise feed-forward: D -> F -> D with GPT-2's tanh-approximated GELU (:func:`gelu`).

    The hidden activations stay on one token axis ``[T, F]``, so the GELU reads
    the matmul's output itself.  Through a reshape, XLA's GPU gemm rewriter
    would count one user of the matmul (the reshape), fuse the GELU without
    writing the pre-activation, and keep a second copy of the matmul for the
    backward pass (read in its source; the ``[T, F]`` form is the one tested).
    """

    cfg: TransformerConfig
    num_layers: int

    @nn.compact
    def __call__(self, x_BxLxD: Array) -> Array:
        B, L, D = x_BxLxD.shape
        h_TxF = constrain(_dense(self.cfg, self.cfg.mlp_dim, "c_fc")(x_BxLxD.reshape(B * L, D)), "batch", "mlp")
        y_TxD = _dense(self.cfg, D, "c_proj", _residual_std(self.num_layers))(gelu(h_TxF))
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
        is_causal: bool,
        prefix_causal: bool,
        deterministic: bool,
        cross_kv: tuple[Array, Array] | None = None,
        cross_mask: Array | None = None,
        cache: Cache | None = None,
        index_B: Array | None = None,
    ) -> tuple[Array, Cache | None]:
        h, cache = self.attn(self.ln_1(x_BxLxD), mask, is_causal, cache, index_B, prefix_causal)
        x_BxLxD = x_BxLxD + self.dropout(h, deterministic=deterministic)
        if cross_kv is not None:
            h = self.crossattention(self.ln_cross_attn(x_BxLxD), cross_kv, cross_mask)
            x_BxLxD = x_BxLxD + self.dropout(h, deterministic=deterministic)
        h = self.mlp(self.ln_2(x_BxLxD))
        return _rows(x_BxLxD + self.dropout(h, deterministic=deterministic)), cache


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
        block = (
            nn.remat(Block, static_argnums=(3, 4, 5), policy=REMAT_POLICIES[cfg.remat_policy]) if cfg.remat else Block
        )
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
        x_BxLxD = take_rows(self.wte.embedding, tokens_BxL, "vocab")
        if vectors_BxLxF is not None:
            x_BxLxD = x_BxLxD + self.wve(vectors_BxLxF)
        if wpe is not None:
            x_BxLxD = x_BxLxD + take_rows(wpe.embedding, positions_BxL, None)
        # Gradients w.r.t. this zero "perturbation" are the gradients w.r.t. the
        # input embeddings; the causality tests read them.  A no-op otherwise.
        x_BxLxD = self.perturb(name, x_BxLxD)
        return _rows(self.dropout(x_BxLxD.astype(self.cfg.compute_dtype), deterministic=deterministic))

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
            x, _ = block(x, mask, False, False, deterministic)
        return self.encoder_ln_f(x)

    def cross_kv(self, encoded_BxSxD: Array) -> list[tuple[Array, Array]]:
        """Every decoder block's cross-attention keys/values of an encoder output (computed once per source)."""
        return [block.cross_kv(encoded_BxSxD) for block in self.h]

    def __call__(self, batch: Mapping[str, Array], deterministic: bool = True, encoded: Array | None = None) -> Array:
        """Float32 logits ``[B, L, V]`` (values ``[B, L]`` with ``vector_dim``) at every position of ``batch``."""
        return self._head(self.features(batch, deterministic, encoded))

    def loss(self, batch: Mapping[str, Array], deterministic: bool = True) -> tuple[Array, Array]:
        """``(loss_sum, predictions_BxL)`` against the batch's targets: what training and evaluation take.

        Token targets: the weighted cross-entropy sum of the tied output layer,
        formed ``loss_chunk_len`` positions at a time without holding the
        logits (:func:`losses.tied_cross_entropy`), and the argmax tokens.
        Value targets: the weighted squared error and the predicted values.
        """
        cfg = self.cfg
        x_BxLxD = self.features(batch, deterministic)
        weights_BxL = batch["loss_weights"]
        if cfg.vector_dim:
            values_BxL = self._head(x_BxLxD)
            return losses.squared_error(values_BxL, batch["target_values"], weights_BxL), values_BxL
        x_BxLxD, embedding_VxD = x_BxLxD.astype(cfg.compute_dtype), self.wte.embedding.astype(cfg.compute_dtype)
        targets_BxL = batch["target_tokens"]
        return losses.tied_cross_entropy(
            x_BxLxD,
            embedding_VxD,
            targets_BxL,
            weights_BxL,
            cfg.loss_chunk_len,
            cfg.vocab_size,
            DTYPES[cfg.logits_dtype],
        )

    def features(self, batch: Mapping[str, Array], deterministic: bool = True, encoded: Array | None = None) -> Array:
        """The stack's output after the final LayerNorm ``[B, L, D]``: what the output layer reads."""
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
        cross_kv, cross = None, None
        if arch == "encoder_decoder":
            dec_seg = seg if seg is not None else jnp.ones_like(tokens)
            cross = masks.cross_mask(dec_seg, batch["encoder_segment_ids"])
            cross_kv = self.cross_kv(encoded)
        for i, block in enumerate(self.h):
            kv_i = cross_kv[i] if cross_kv else None
            x, _ = block(x, mask, is_causal, kind != "bidirectional", deterministic, kv_i, cross)
        return self.ln_f(x)

    def extend(
        self,
        tokens_BxQ: Array,
        positions_BxQ: Array,
        mask: Array,
        cache: list[Cache],
        index_B: Array,
        cross_kv: list[tuple[Array, Array]] | None = None,
        cross_mask: Array | None = None,
        logits_at_B: Array | None = None,
    ) -> tuple[Array, list[Cache]]:
        """Incremental decoding: run ``Q`` new positions against each layer's key/value cache.

        The new keys/values are written into ``cache`` at ``index_B`` (per row);
        ``mask`` is ``[B, 1, Q, L_max]`` over the cache positions.  Returns the
        new positions' logits ``[B, Q, V]`` -- or, with ``logits_at_B``, only
        those of one of them per row ``[B, 1, V]`` -- and the updated caches.
        Prefill is one call with the whole prompt and needs only the last
        prompt position's logits: the output layer over every position would
        cost ``2 P V D`` FLOPs and a ``[B, P, V]`` array (GPT-2, 8 prompts of
        1,000 tokens: 0.6 TFLOP, 1.6 GB).  Generation is one call per token.
        """
        wpe = self.wpe if self.cfg.positional == "learned" else None
        x = self._embed(tokens_BxQ, positions_BxQ, wpe, True, "embeddings")
        new_cache = []
        for i, block in enumerate(self.h):
            kv = cross_kv[i] if cross_kv is not None else None
            x, layer_cache = block(x, mask, False, False, True, kv, cross_mask, cache[i], index_B)
            new_cache.append(layer_cache)
        if logits_at_B is not None:
            x = jnp.take_along_axis(x, logits_at_B[:, None, None], axis=1)
        return self._head(self.ln_f(x)), new_cache

    def _head(self, x_BxLxD: Array) -> Array:
        """Logits (or values) of the final LayerNorm's output."""
        cfg = self.cfg
        if cfg.vector_dim:
            return constrain(self.value_head(x_BxLxD)[..., 0].astype(jnp.float32), "batch", None)
        # Tied output embedding; logits accumulate in float32 and are rounded to logits_dtype as the loss's are.
        logits_BxLxV = tied_logits(x_BxLxD.astype(cfg.compute_dtype), self.wte.embedding.astype(cfg.compute_dtype))
        logits_BxLxV = logits_BxLxV.astype(DTYPES[cfg.logits_dtype]).astype(jnp.float32)
        return constrain(losses.mask_padded_vocab(logits_BxLxV, cfg.vocab_size), "batch", None, "vocab")
