"""Relative position schemes: RoPE against its formula, T5's buckets, and invariance to shifting every position."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax import batch as batch_lib
from gpt2_jax import positions
from gpt2_jax.model import Transformer, TransformerConfig


def test_rope_rotates_each_pair_by_position_times_its_frequency():
    rng = np.random.default_rng(0)
    B, L, N, H = 2, 5, 3, 8
    x = rng.standard_normal((B, L, N, H)).astype(np.float32)
    pos = rng.integers(0, 100, (B, L))
    got = np.asarray(positions.rope(jnp.asarray(x), jnp.asarray(pos)))
    # As complex numbers: (x_i + i x_{i+H/2}) * exp(i * p * 10000^(-2i/H)).
    z = x[..., : H // 2] + 1j * x[..., H // 2 :]
    theta = pos[:, :, None, None] * 10000.0 ** (-2 * np.arange(H // 2) / H)
    want = z * np.exp(1j * theta)
    np.testing.assert_allclose(got, np.concatenate([want.real, want.imag], -1), atol=1e-4)


def test_rope_scores_depend_only_on_the_distance():
    rng = np.random.default_rng(1)
    q, k = (jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32) for _ in range(2))

    def score(pq, pk):
        return float(jnp.sum(positions.rope(q, jnp.array([[pq]])) * positions.rope(k, jnp.array([[pk]]))))

    assert score(3, 10) == pytest.approx(score(53, 60), rel=1e-4)
    assert score(3, 10) != pytest.approx(score(3, 11), rel=1e-3)


@pytest.mark.parametrize(
    "relative, bidirectional, bucket",
    [
        (0, True, 0), (-1, True, 1), (-7, True, 7), (-8, True, 8), (-128, True, 15), (-1000, True, 15),
        (1, True, 17), (7, True, 23), (1000, True, 31),
        (0, False, 0), (5, False, 0), (-1, False, 1), (-15, False, 15), (-16, False, 16), (-32, False, 21),
        (-128, False, 31), (-5000, False, 31),
    ],
)  # fmt: skip
def test_t5_buckets_are_exact_near_and_logarithmic_far(relative, bidirectional, bucket):
    assert int(positions.t5_bucket(jnp.array(relative), bidirectional)) == bucket


def random_batch(arch: str, rng: np.random.Generator, L: int = 12) -> dict:
    batch = batch_lib.dummy(arch, 2, L, L, 0)
    for key in ("input_tokens", "target_tokens", "encoder_input_tokens"):
        if key in batch:
            batch[key] = rng.integers(0, 50, batch[key].shape).astype(np.int32)
    if arch == "prefix_lm":
        batch["bidirectional"] = (np.arange(L)[None] < 5).repeat(2, 0).astype(np.int32)
    return batch


@pytest.mark.parametrize("arch", ["decoder_only", "prefix_lm", "encoder_decoder", "encoder_only"])
@pytest.mark.parametrize("positional", ["rope", "t5_bias", "learned"])
def test_shifting_every_position_changes_nothing_under_relative_schemes(arch, positional):
    rng = np.random.default_rng(2)
    model = Transformer(TransformerConfig(arch=arch, vocab_size=50, positional=positional, max_len=64))
    batch = random_batch(arch, rng)
    params = model.init(jax.random.PRNGKey(0), batch)["params"]
    if positional == "t5_bias":  # a nonzero table, so that positions matter at all
        params = jax.tree.map(lambda p: p, params)
        for name in ("relative_bias", "encoder_relative_bias"):
            if name in params:
                params[name]["embedding"] = jnp.asarray(rng.standard_normal(params[name]["embedding"].shape))
    shifted = dict(batch, positions=batch["positions"] + 17)
    if "encoder_positions" in batch:
        shifted["encoder_positions"] = batch["encoder_positions"] + 9
    same = np.abs(np.asarray(model.apply({"params": params}, batch) - model.apply({"params": params}, shifted))).max()
    if positional == "learned":
        assert same > 1e-3, "learned absolute positions must change with a shift (the test can fail)"
    else:
        assert same < 1e-4
    reversed_positions = dict(batch, positions=batch["positions"][:, ::-1].copy())
    moved = np.abs(
        np.asarray(model.apply({"params": params}, reversed_positions) - model.apply({"params": params}, batch))
    )
    assert moved.max() > 1e-4, "positions must matter"
