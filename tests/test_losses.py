"""The fused output layer + cross-entropy equals optax on whole logits, in every chunking, and never holds them."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gpt2_jax import losses
from tests.helpers import jaxpr_equations


def batch(seed=0, B=3, L=5, D=8, V=17):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((B, L, D)), jnp.float32)
    emb = jnp.asarray(rng.standard_normal((V, D)), jnp.float32)
    # Ties: x[0, 0] = 0 makes every logit 0 (argmax takes the first index), and
    # two equal embedding rows make a tie at x[0, 1] too.
    x = x.at[0, 0].set(0.0)
    emb = emb.at[3].set(emb[2])
    targets = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32).at[0, 0].set(V - 1).at[0, 1].set(3)
    x = x.at[0, 1].set(emb[2] * 3.0)  # logits 2 and 3 are the (equal) maximum, the target is the second
    weights = jnp.asarray(rng.random((B, L)) > 0.3, jnp.float32).at[0, :2].set(1.0)  # the ties carry loss
    return x, emb, targets, weights


def reference(x, emb, targets, weights):
    logits = jnp.einsum("bld,vd->blv", x, emb)
    loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights)
    return loss, jnp.argmax(logits, -1)


@pytest.mark.parametrize(
    "impl", [losses.row_max_and_argmax, losses.scaled_gap_max_and_argmax, losses.variadic_max_and_argmax]
)
def test_row_max_and_argmax_equal_jnp_on_ties_magnitudes_and_padding(impl):
    """The first maximum's index, as jnp.argmax: ties, tiny and huge logits, padded entries, one-ulp gaps."""
    rng = np.random.default_rng(0)
    V = 50257  # GPT-2's vocabulary: indices far past what a float's mantissa needs at small V
    rows = [rng.standard_normal(V) * scale for scale in (1e-9, 1e-3, 1.0, 30.0, 1e12)]
    rows.append(np.zeros(V))  # all tied: index 0
    tie = rng.standard_normal(V)
    tie[[7, 40000]] = tie.max() + 1.0  # two equal maxima: the first
    rows.append(tie)
    ulp = rng.standard_normal(V)
    top = np.float32(ulp.max() + 1)
    ulp[123], ulp[124] = top, np.nextafter(top, np.float32(-np.inf))  # the runner-up one float32 ulp below
    rows.append(ulp)
    padded = rng.standard_normal(V)
    padded[V - 100 :] = losses.PADDED_LOGIT
    rows.append(padded)
    rows.append(np.full(V, losses.PADDED_LOGIT))
    rows[-1][V - 1] = -3.0
    logits = jnp.asarray(np.stack(rows), jnp.float32)
    got_max, got_argmax = jax.jit(impl)(logits)
    np.testing.assert_array_equal(got_argmax, jnp.argmax(logits, -1))
    np.testing.assert_array_equal(got_max, jnp.max(logits, -1))
    assert got_argmax.dtype == jnp.int32 and int(got_argmax[6]) == 7 and int(got_argmax[7]) == 123


@pytest.mark.parametrize("impl", [losses.scaled_gap_max_and_argmax, losses.variadic_max_and_argmax])
def test_row_argmax_over_a_vocabulary_split_across_devices(impl):
    """Logits split over 4 devices' vocabulary shards: the same first index, a tie across shards included."""
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("batch", "vocab"))
    logits = np.random.default_rng(0).standard_normal((16, 4096)).astype(np.float32)
    logits[3, [100, 3000]] = 9.0  # equal maxima on the first and the third shard
    placed = jax.device_put(logits, NamedSharding(mesh, P("batch", "vocab")))
    _, argmax = jax.jit(impl)(placed)
    np.testing.assert_array_equal(argmax, logits.argmax(-1))
    assert int(np.asarray(argmax)[3]) == 100


@pytest.mark.parametrize("chunk_len", [0, 1, 2, 5, 64])  # whole, every position, uneven (5 = 2 + 2 + 1), one
def test_loss_argmax_and_gradients_equal_optax_on_materialised_logits(chunk_len):
    x, emb, targets, weights = batch()
    loss, argmax = losses.tied_cross_entropy(x, emb, targets, weights, chunk_len)
    want_loss, want_argmax = reference(x, emb, targets, weights)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_array_equal(argmax, want_argmax)
    assert int(argmax[0, 0]) == 0 and int(argmax[0, 1]) == 2, "ties go to the first index, as jnp.argmax"

    # Scaled by a cotangent (the train step divides by the token count), with
    # respect to x, the embedding and the loss weights.
    def scaled(f):
        return lambda x, emb, w: 0.37 * f(x, emb, targets, w)[0]

    got = jax.grad(scaled(lambda *a: losses.tied_cross_entropy(*a, chunk_len)), argnums=(0, 1, 2))(x, emb, weights)
    want = jax.grad(scaled(reference), argnums=(0, 1, 2))(x, emb, weights)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-5)
    assert not bool(jnp.any(got[0][weights == 0])), "tokens without loss weight get no gradient"


def test_jit_and_no_gradient_give_the_same_loss():
    x, emb, targets, weights = batch()
    eager = losses.tied_cross_entropy(x, emb, targets, weights, 2)
    jitted = jax.jit(losses.tied_cross_entropy, static_argnums=4)(x, emb, targets, weights, 2)
    value, _ = jax.value_and_grad(lambda x: losses.tied_cross_entropy(x, emb, targets, weights, 2)[0])(x)
    np.testing.assert_allclose(eager[0], jitted[0], rtol=1e-6)
    np.testing.assert_allclose(value, eager[0], rtol=1e-6)


def _compiled_grad(x, emb, targets, weights, chunk_len):
    def loss(x, emb):
        return losses.tied_cross_entropy(x, emb, targets, weights, chunk_len)[0]

    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, emb).compile()


def _scatter_shapes(hlo: str) -> list[str]:
    return re.findall(r"= \w+\[([\d,]*)\][^ ]* scatter\(", hlo)


def test_gradient_never_holds_the_whole_logits_and_scatters_no_logits():
    # 512 positions x 4096 tokens of vocabulary: the float32 logits are 8 MB.
    x, emb, targets, weights = batch(B=2, L=256, D=16, V=4096)
    logits_bytes = 2 * 256 * 4096 * 4
    whole = _compiled_grad(x, emb, targets, weights, 0)
    chunked = _compiled_grad(x, emb, targets, weights, 32)
    assert whole.memory_analysis().temp_size_in_bytes >= logits_bytes
    assert chunked.memory_analysis().temp_size_in_bytes < logits_bytes / 2
    # The one-hot part is scattered into the embedding's rows, never into logits.
    assert set(_scatter_shapes(chunked.as_text())) <= {"4096,16"}

    def autodiff(x, emb):
        return reference(x, emb, targets, weights)[0]

    text = jax.jit(jax.grad(autodiff, argnums=(0, 1))).lower(x, emb).compile().as_text()
    assert any(int(np.prod([int(d) for d in shape.split(",")])) >= 2 * 256 * 4096 for shape in _scatter_shapes(text)), (
        "the automatic derivative scatters the one-hot term into the logits' gradient"
    )


def _dots(hlo: str) -> list[tuple[str, str]]:
    """(output shape, lhs contracting dims) of every matmul in a compiled module."""
    return re.findall(r"= \w+\[([\d,]*)\][^ ]* dot\(.*?lhs_contracting_dims=\{([\d,]*)\}", hlo)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a layout for XLA:CPU's matmuls; GPUs run cuBLAS calls")
@pytest.mark.parametrize("chunk_len", [0, 32])
def test_embedding_gradient_is_one_matmul_contracting_a_written_out_transpose(chunk_len):
    # XLA:CPU runs a product that contracts the first axis of both operands at
    # about half its matmul rate; the [D, V] gradient must stay [D, T] @ [T, V].
    x, emb, targets, weights = batch(B=2, L=256, D=16, V=4096)
    dots = _dots(_compiled_grad(x, emb, targets, weights, chunk_len).as_text())
    assert [lhs for shape, lhs in dots if shape in ("16,4096", "4096,16")] == ["1"], dots
    assert all(lhs == "1" for _, lhs in dots), dots
    x2, g = x.reshape(-1, 16), jnp.asarray(np.random.default_rng(1).standard_normal((512, 4096)), jnp.float32)
    want = jnp.einsum("td,tv->dv", x2, g, precision="highest")
    np.testing.assert_allclose(losses.transposed_embedding_grad(x2, g), want, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a layout for XLA:CPU's matmuls; GPUs run cuBLAS calls")
def test_tied_logits_embedding_gradient_takes_the_same_layout():
    # The plain forward pass's logits, which users differentiate, go through transposed_embedding_grad too.
    from gpt2_jax.model import tied_logits

    x, emb, _, _ = batch(B=2, L=256, D=16, V=4096)
    cot = jnp.asarray(np.random.default_rng(2).standard_normal((2, 256, 4096)), jnp.float32)
    grad = jax.jit(jax.grad(lambda x, emb: jnp.sum(tied_logits(x, emb) * cot), argnums=(0, 1)))
    dots = _dots(grad.lower(x, emb).compile().as_text())
    assert [lhs for shape, lhs in dots if shape in ("16,4096", "4096,16")] == ["1"], dots
    assert all(lhs == "1" for _, lhs in dots), dots


def test_bfloat16_inputs_get_bfloat16_gradients_from_bfloat16_matmuls():
    x, emb, targets, weights = batch()
    xb, eb = x.astype(jnp.bfloat16), emb.astype(jnp.bfloat16)

    def loss(x, emb):
        return losses.tied_cross_entropy(x, emb, targets, weights, 2)[0]

    gx, ge = jax.grad(loss, argnums=(0, 1))(xb, eb)
    assert gx.dtype == ge.dtype == jnp.bfloat16
    want = jax.grad(loss, argnums=(0, 1))(xb.astype(jnp.float32), eb.astype(jnp.float32))
    for g, w in zip((gx, ge), want, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=0.05 * float(jnp.max(jnp.abs(w))))
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(xb, eb)
    dots = [e for e in jaxpr_equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert all([str(v.aval.dtype) for v in e.invars] == ["bfloat16", "bfloat16"] for e in dots), dots
    # The logits and the two gradients' matmuls (the vocabulary on one side); the other dot is the targets' logits.
    V = emb.shape[0]
    assert len([e for e in dots if any(V in v.aval.shape for v in e.invars)]) == 3, dots
    assert len(dots) == 4, dots


def test_bfloat16_logits_give_the_cross_entropy_of_the_rounded_logits():
    x, emb, targets, weights = batch(V=300)

    def rounded_reference(x, emb, w):
        # The logits' values rounded, their gradient taken in float32 (a straight-through rounding).
        logits = jnp.einsum("bld,vd->blv", x, emb)
        logits = logits + jax.lax.stop_gradient(logits.astype(jnp.bfloat16).astype(jnp.float32) - logits)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * w), jnp.argmax(logits, -1)

    def fused(x, emb, w):
        return losses.tied_cross_entropy(x, emb, targets, w, 2, logits_dtype=jnp.bfloat16)

    (loss, argmax), got = jax.value_and_grad(fused, argnums=(0, 1, 2), has_aux=True)(x, emb, weights)
    (want_loss, want_argmax), want = jax.value_and_grad(rounded_reference, argnums=(0, 1, 2), has_aux=True)(
        x, emb, weights
    )
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    assert float(loss) != float(losses.tied_cross_entropy(x, emb, targets, weights, 2)[0]), "the logits were rounded"
    np.testing.assert_array_equal(argmax, want_argmax)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-5)
    jaxpr = jax.make_jaxpr(fused)(x, emb, weights)
    logits_dots = [e for e in jaxpr_equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert any(e.outvars[0].aval.dtype == jnp.bfloat16 and 300 in e.outvars[0].aval.shape for e in logits_dots)


def test_metric_sums_count_weighted_hits_and_tokens():
    targets = jnp.array([[1, 2, 3], [4, 5, 6]])
    predictions = jnp.array([[1, 0, 3], [4, 5, 0]])
    weights = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.5, 1.0]])
    sums = losses.metric_sums(jnp.float32(7.0), predictions, {"target_tokens": targets, "loss_weights": weights})
    assert {k: float(v) for k, v in sums.items()} == {"loss_sum": 7.0, "weight_sum": 4.5, "correct_sum": 2.5}
