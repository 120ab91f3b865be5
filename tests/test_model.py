"""The model family: names, initialisation, and causality proven by gradients."""

import contextlib
import io
import re

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from gpt2_jax import batch as batch_lib
from gpt2_jax import losses
from gpt2_jax.data import objectives
from gpt2_jax.data.tokenizers import ByteTokenizer
from gpt2_jax.model import REMAT_POLICIES, Transformer, TransformerConfig
from gpt2_jax.validation import POSITIONALS

TOK = ByteTokenizer()


def make(arch, **kw):
    cfg = TransformerConfig(
        arch=arch, vocab_size=TOK.vocab_size, num_layers=2, num_heads=2, emb_dim=16, mlp_dim=32, max_len=16, **kw
    )
    return Transformer(cfg)


def lm_example(arch, length=8, cut=4, seed=0):
    rng = np.random.default_rng(seed)
    windows = rng.integers(TOK.num_specials, TOK.vocab_size, size=(1, length + 1))
    return objectives.lm_batch(windows, np.array([cut]), arch, TOK)


def init(model, batch, seed=0):
    return model.init(jax.random.PRNGKey(seed), batch)


def dependency(model, variables, batch, wrt="embeddings"):
    """M[t, s] = |d loss_t / d embedding_s|: how the loss at position t depends on input s."""
    params = variables["params"]
    perturbations = variables["perturbations"]

    def per_position_loss(pert):
        logits = model.apply({"params": params, "perturbations": pert}, batch)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["target_tokens"])[0]

    jac = jax.jit(jax.jacrev(per_position_loss))(perturbations)[wrt]  # [L, 1, S, D]
    return np.abs(np.asarray(jac[:, 0])).sum(-1)


def test_gpt2_parameter_names_and_shapes():
    model = make("decoder_only")
    params = init(model, batch_lib.dummy("decoder_only", 1, 8))["params"]
    flat = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(params).items()}
    D, V = 16, TOK.vocab_size
    expected = {
        "wte/embedding": (V, D),
        "wpe/embedding": (16, D),
        "ln_f/scale": (D,),
        "ln_f/bias": (D,),
    }
    for i in range(2):
        expected.update(
            {
                f"h_{i}/ln_1/scale": (D,),
                f"h_{i}/ln_1/bias": (D,),
                f"h_{i}/attn/c_attn/kernel": (D, 3, D),  # GPT-2's [D, 3D], one axis per part
                f"h_{i}/attn/c_attn/bias": (3, D),
                f"h_{i}/attn/c_proj/kernel": (D, D),
                f"h_{i}/attn/c_proj/bias": (D,),
                f"h_{i}/ln_2/scale": (D,),
                f"h_{i}/ln_2/bias": (D,),
                f"h_{i}/mlp/c_fc/kernel": (D, 32),
                f"h_{i}/mlp/c_fc/bias": (32,),
                f"h_{i}/mlp/c_proj/kernel": (32, D),
                f"h_{i}/mlp/c_proj/bias": (D,),
            }
        )
    assert flat == expected


def test_encoder_decoder_names_cross_attention_and_sharing():
    b = batch_lib.dummy("encoder_decoder", 1, 6, encoder_length=5)
    params = init(make("encoder_decoder", num_encoder_layers=3), b)["params"]
    names = set(params)
    assert {"wte", "wpe", "ln_f", "h_0", "h_1", "encoder_wpe", "encoder_ln_f"} <= names
    assert {"encoder_h_0", "encoder_h_1", "encoder_h_2"} <= names and "encoder_h_3" not in names
    assert set(params["h_0"]) == {"ln_1", "attn", "ln_cross_attn", "crossattention", "ln_2", "mlp"}
    assert set(params["h_0"]["crossattention"]) == {"q_attn", "c_attn", "c_proj"}
    assert params["h_0"]["crossattention"]["c_attn"]["kernel"].shape == (16, 2, 16)
    assert "crossattention" not in params["encoder_h_0"]

    shared = init(make("encoder_decoder", share_encoder_decoder=True), b)["params"]
    assert not any(k.startswith("encoder_h") or k == "encoder_wpe" for k in shared)
    count = lambda p: sum(x.size for x in jax.tree.leaves(p))  # noqa: E731
    assert count(shared) < count(params)


def test_gpt2_initialisation_scales_residual_projections():
    cfg = TransformerConfig(vocab_size=512, num_layers=8, num_heads=4, emb_dim=256, max_len=256)
    params = Transformer(cfg).init(jax.random.PRNGKey(0), batch_lib.dummy("decoder_only", 1, 4))["params"]
    assert np.std(params["wte"]["embedding"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(params["h_0"]["attn"]["c_attn"]["kernel"]) == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / np.sqrt(2 * 8)
    assert np.std(params["h_3"]["attn"]["c_proj"]["kernel"]) == pytest.approx(scaled, rel=0.05)
    assert np.std(params["h_3"]["mlp"]["c_proj"]["kernel"]) == pytest.approx(scaled, rel=0.05)
    assert np.all(params["h_0"]["attn"]["c_attn"]["bias"] == 0)
    assert np.all(params["ln_f"]["scale"] == 1)


@pytest.mark.parametrize("positional", POSITIONALS)
def test_decoder_only_is_causal_by_gradients(positional):
    b = lm_example("decoder_only")
    model = make("decoder_only", positional=positional)
    M = dependency(model, init(model, b), b)
    L = M.shape[0]
    causal = np.tril(np.ones((L, L), bool))
    assert np.all(M[~causal] == 0.0), "a loss depends on a later input"
    assert np.all(M[causal] > 0.0), "a loss ignores an earlier input"


@pytest.mark.parametrize("positional", POSITIONALS)
def test_prefix_lm_sees_prefix_both_ways_and_is_causal_after(positional):
    P, L = 4, 8
    b = lm_example("prefix_lm", length=L, cut=P)
    model = make("prefix_lm", positional=positional)
    M = dependency(model, init(model, b), b)
    may_see = np.tril(np.ones((L, L), bool))
    may_see[:P, :P] = True
    assert np.all(M[~may_see] == 0.0)
    assert np.all(M[may_see] > 0.0)
    # Loss sits only on positions whose future is hidden: from the last prefix position on.
    assert np.all(b["loss_weights"][0, : P - 1] == 0) and np.all(b["loss_weights"][0, P - 1 :] == 1)
    assert np.all(M[P - 1 :, P:][np.triu(np.ones((L - P + 1, L - P), bool))] == 0.0)


@pytest.mark.parametrize("positional", POSITIONALS)
def test_encoder_decoder_decoder_causal_encoder_visible_to_all(positional):
    b = lm_example("encoder_decoder", length=8, cut=4)
    model = make("encoder_decoder", positional=positional)
    variables = init(model, b)
    M = dependency(model, variables, b)
    T = M.shape[0]
    causal = np.tril(np.ones((T, T), bool))
    assert np.all(M[~causal] == 0.0) and np.all(M[causal] > 0.0)
    E = dependency(model, variables, b, wrt="encoder_embeddings")
    assert E.shape == (T, 4) and np.all(E > 0.0), "every target must see every source token"


def test_encoder_decoder_ignores_padded_source():
    b = lm_example("encoder_decoder", length=8, cut=3)
    b = objectives.lm_batch(
        np.concatenate([b["encoder_input_tokens"], b["target_tokens"]], 1),
        np.array([3]),
        "encoder_decoder",
        TOK,
        encoder_len=5,
    )
    assert list(b["encoder_segment_ids"][0]) == [1, 1, 1, 0, 0]
    model = make("encoder_decoder")
    E = dependency(model, init(model, b), b, wrt="encoder_embeddings")
    assert np.all(E[:, 3:] == 0.0) and np.all(E[:, :3] > 0.0)


@pytest.mark.parametrize("positional", POSITIONALS)
def test_encoder_only_is_bidirectional_within_segments(positional):
    rng = np.random.default_rng(0)
    tokens = rng.integers(TOK.num_specials, TOK.vocab_size, size=(1, 8))
    b = objectives.mlm_batch(tokens, TOK, 0.25, rng)
    b["loss_weights"] = np.ones_like(b["loss_weights"])
    b["segment_ids"] = np.array([[1, 1, 1, 1, 1, 2, 2, 2]])
    model = make("encoder_only", positional=positional)
    M = dependency(model, init(model, b), b)
    same = b["segment_ids"][0][:, None] == b["segment_ids"][0][None, :]
    assert np.all(M[same] > 0.0), "bidirectional: every position sees its whole example"
    assert np.all(M[~same] == 0.0), "packed examples must not see each other"


def test_packed_decoder_rows_never_attend_across_examples():
    rng = np.random.default_rng(1)
    tokens = rng.integers(TOK.num_specials, TOK.vocab_size, size=(1, 9))
    b = objectives.lm_batch(tokens, np.array([1]), "decoder_only", TOK, loss="all")
    b["segment_ids"] = np.array([[1, 1, 1, 2, 2, 2, 2, 0]])
    model = make("decoder_only")
    M = dependency(model, init(model, b), b)
    seg = b["segment_ids"][0]
    allowed = np.tril(np.ones((8, 8), bool)) & (seg[:, None] == seg[None, :]) & (seg[None, :] > 0)
    assert np.all(M[:7][~allowed[:7]] == 0.0)
    assert np.all(M[:7][allowed[:7]] > 0.0)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    b = lm_example("decoder_only")
    model = make("decoder_only", dtype="bfloat16")
    variables = init(model, b)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables["params"]))
    logits = model.apply({"params": variables["params"]}, b)
    assert logits.dtype == jnp.float32
    ref = make("decoder_only").apply({"params": variables["params"]}, b)
    np.testing.assert_allclose(logits, ref, atol=0.05)


@jax.default_matmul_precision("float32")  # GPUs multiply float32 in TF32 by default (measured: fails there without)
@pytest.mark.parametrize("arch", ["decoder_only", "prefix_lm", "encoder_decoder", "encoder_only"])
def test_training_loss_equals_the_cross_entropy_of_the_models_logits(arch):
    # Transformer.loss (what train and eval steps take) fuses the output layer
    # with the loss over position chunks; 3 does not divide the 10 positions.
    if arch == "encoder_only":
        rng = np.random.default_rng(0)
        b = objectives.mlm_batch(rng.integers(TOK.num_specials, TOK.vocab_size, size=(2, 10)), TOK, 0.3, rng)
    else:
        rng = np.random.default_rng(0)
        windows = rng.integers(TOK.num_specials, TOK.vocab_size, size=(2, 11))
        b = objectives.lm_batch(windows, np.array([4, 6]), arch, TOK)
    model = make(arch, loss_chunk_len=3)
    params = init(model, b)["params"]
    assert float(np.sum(b["loss_weights"])) > 0

    def fused(p):
        loss_sum, argmax = model.apply({"params": p}, b, method=Transformer.loss)
        return loss_sum, argmax

    def from_logits(p):
        logits = model.apply({"params": p}, b)
        token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, b["target_tokens"])
        return jnp.sum(token_loss * b["loss_weights"]), jnp.argmax(logits, -1)

    (loss, argmax), grads = jax.jit(jax.value_and_grad(fused, has_aux=True))(params)
    (want_loss, want_argmax), want_grads = jax.jit(jax.value_and_grad(from_logits, has_aux=True))(params)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_array_equal(argmax, want_argmax)
    want_grads = traverse_util.flatten_dict(want_grads)
    for path, g in traverse_util.flatten_dict(grads).items():
        np.testing.assert_allclose(g, want_grads[path], rtol=1e-4, atol=1e-6, err_msg="/".join(path))


@jax.default_matmul_precision("float32")  # as above
def test_padded_vocabulary_is_never_predicted_and_gets_no_gradient():
    b = lm_example("decoder_only", length=10)
    V = TOK.vocab_size
    model = make("decoder_only", pad_vocab_to=64, loss_chunk_len=3)
    params = init(model, b)["params"]
    assert params["wte"]["embedding"].shape[0] == model.cfg.table_rows == -(-V // 64) * 64 > V
    logits = model.apply({"params": params}, b)
    assert logits.shape[-1] == model.cfg.table_rows
    assert bool(jnp.all(logits[..., V:] == losses.PADDED_LOGIT))

    def fused(p):
        return model.apply({"params": p}, b, method=Transformer.loss)

    def over_real_columns(p):
        real = model.apply({"params": p}, b)[..., :V]
        token_loss = optax.softmax_cross_entropy_with_integer_labels(real, b["target_tokens"])
        return jnp.sum(token_loss * b["loss_weights"]), jnp.argmax(real, -1)

    (loss, argmax), grads = jax.value_and_grad(fused, has_aux=True)(params)
    (want, want_argmax), want_grads = jax.value_and_grad(over_real_columns, has_aux=True)(params)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_array_equal(argmax, want_argmax)
    table_grad = grads["wte"]["embedding"]
    np.testing.assert_allclose(table_grad, want_grads["wte"]["embedding"], rtol=1e-4, atol=1e-6)
    assert not bool(jnp.any(table_grad[V:])), "padded rows are never looked up nor predicted"


def residual_bytes(fn, *args) -> int:
    """Bytes of the intermediates (not the arguments) that reverse-mode autodiff of ``fn`` keeps for the backward."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(fn, *args)
    total = 0
    for line in out.getvalue().splitlines():
        bits, dims = re.match(r"[a-z]+(\d*)\[([\d,]*)\]", line).groups()  # f32[1,8,16], bool[1,1,8,8]
        if "from the argument" not in line:
            total += int(np.prod([int(d) for d in dims.split(",") if d])) * (int(bits) // 8 if bits else 1)
    return total


def test_remat_changes_nothing_but_what_the_backward_pass_keeps():
    b = lm_example("prefix_lm")
    plain = make("prefix_lm")
    params = init(plain, b)["params"]

    def loss(model):
        return lambda p: model.apply({"params": p}, b).sum()

    g1 = jax.jit(jax.grad(loss(plain)))(params)
    kept = {"none": residual_bytes(loss(plain), params)}
    for policy in REMAT_POLICIES:
        remat = make("prefix_lm", remat=True, remat_policy=policy)
        g2 = jax.jit(jax.grad(loss(remat)))(params)
        for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        kept[policy] = residual_bytes(loss(remat), params)
    assert kept["none"] > kept["dots"] > kept["full"] > 0, kept
    # "full" keeps each block's input [B, L, D] and little else; "dots" adds the dense layers' outputs that
    # the backward pass reads (q, k, v, attention's output projection, c_fc; the MLP's c_proj output only
    # feeds a residual add).
    B, L = b["input_tokens"].shape
    D, F = plain.cfg.emb_dim, plain.cfg.mlp_dim
    assert kept["full"] < kept["none"] / 4, kept
    assert kept["dots"] >= kept["full"] + plain.cfg.num_layers * B * L * (4 * D + F) * 4, kept


def test_no_positions_makes_bidirectional_stack_permutation_equivariant():
    # Without position embeddings an encoder cannot tell order (Haviv et al. 2022).
    rng = np.random.default_rng(0)
    tokens = rng.integers(TOK.num_specials, TOK.vocab_size, size=(1, 6))
    b = objectives.mlm_batch(tokens, TOK, 0.3, rng)
    model = make("encoder_only", positional="none")
    params = init(model, b)["params"]
    perm = np.array([3, 1, 5, 0, 2, 4])
    permuted = {k: v[:, perm] for k, v in b.items()}
    out, out_perm = model.apply({"params": params}, b), model.apply({"params": params}, permuted)
    np.testing.assert_allclose(out[:, perm], out_perm, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs a GPU")
@pytest.mark.parametrize("arch", ["decoder_only", "prefix_lm", "encoder_decoder"])
def test_cudnn_attention_matches_xla_on_gpu(arch):
    cfg = dict(num_layers=2, num_heads=4, emb_dim=128, mlp_dim=512, max_len=128, dtype="bfloat16")
    b = lm_example(arch, length=64, cut=32)
    xla = Transformer(TransformerConfig(arch=arch, vocab_size=TOK.vocab_size, **cfg))
    cudnn = Transformer(TransformerConfig(arch=arch, vocab_size=TOK.vocab_size, attention_impl="cudnn", **cfg))
    params = xla.init(jax.random.PRNGKey(0), b)["params"]
    np.testing.assert_allclose(xla.apply({"params": params}, b), cudnn.apply({"params": params}, b), atol=5e-2)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuBLASLt epilogues need a GPU")
def test_recomputing_gelu_mlp_gets_bias_and_gelu_as_the_matmuls_epilogue_under_cublaslt():
    """Forward: one matmul writes bias + GELU and the pre-activation; no matmul runs twice.

    XLA rewrites matmuls into cuBLASLt epilogues only where its Triton GEMM
    fusion has not taken them first, hence both options.
    """
    from gpt2_jax.model import MLP

    cfg = TransformerConfig(emb_dim=768, mlp_dim=3072, dtype="bfloat16", gelu_impl="recompute")
    mlp = MLP(cfg, num_layers=2)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 128, 768), jnp.bfloat16)
    params = mlp.init(jax.random.PRNGKey(1), x)
    step = jax.jit(
        jax.grad(lambda p, x: jnp.sum(mlp.apply(p, x).astype(jnp.float32) ** 2), argnums=(0, 1)),
        compiler_options={"xla_gpu_enable_cublaslt": True, "xla_gpu_enable_triton_gemm": False},
    )
    hlo = step.lower(params, x).compile().as_text()
    epilogues = re.findall(r'"epilogue":"(\w+)"', hlo)
    assert epilogues.count("BIAS_GELU_AUX") == 1, epilogues
    assert len(epilogues) == 6, epilogues  # two forward matmuls, four backward
