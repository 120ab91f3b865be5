"""Literal mask matrices: what each architecture's attention may see."""

import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax import masks


def as_int(mask):
    return np.asarray(mask).astype(int)


def test_causal_mask_is_lower_triangular():
    expected = [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 1],
    ]
    m = masks.causal_mask(4)
    assert m.shape == (1, 1, 4, 4) and m.dtype == jnp.bool_
    np.testing.assert_array_equal(as_int(m)[0, 0], expected)


def test_causal_mask_with_offset_for_incremental_decoding():
    # Two new queries at absolute positions 3 and 4 over a cache of 5 keys.
    np.testing.assert_array_equal(as_int(masks.causal_mask(2, 5, offset=3))[0, 0], [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])


def test_prefix_mask_matches_t5x_decoder_causal_attention():
    bidirectional = jnp.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    expected_prefix3 = [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ]
    m = masks.prefix_mask(bidirectional)
    assert m.shape == (2, 1, 5, 5)
    np.testing.assert_array_equal(as_int(m)[0, 0], expected_prefix3)
    # A one-token prefix is exactly causal.
    np.testing.assert_array_equal(as_int(m)[1, 0], as_int(masks.causal_mask(5))[0, 0])


def test_packed_causal_mask_never_crosses_segments_and_masks_padding():
    segment_ids = jnp.array([[1, 1, 1, 2, 2, 0]])
    expected = [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0],
    ]
    m = masks.self_attention_mask("causal", 6, segment_ids=segment_ids)
    np.testing.assert_array_equal(as_int(m)[0, 0], expected)


def test_packed_bidirectional_mask_is_block_diagonal():
    segment_ids = jnp.array([[1, 1, 2, 2, 2]])
    expected = [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1],
        [0, 0, 1, 1, 1],
        [0, 0, 1, 1, 1],
    ]
    np.testing.assert_array_equal(as_int(masks.self_attention_mask("bidirectional", 5, segment_ids))[0, 0], expected)


def test_packed_prefix_mask_combines_prefix_and_segments():
    # Two packed prefix-LM examples: (prefix 2, target 1) and (prefix 1, target 1).
    segment_ids = jnp.array([[1, 1, 1, 2, 2]])
    bidirectional = jnp.array([[1, 1, 0, 1, 0]])
    expected = [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    m = masks.self_attention_mask("prefix", 5, segment_ids, bidirectional)
    np.testing.assert_array_equal(as_int(m)[0, 0], expected)


def test_cross_mask_sees_own_source_only():
    decoder_segments = jnp.array([[1, 1, 2, 0]])
    encoder_segments = jnp.array([[1, 1, 1, 2, 2, 0]])
    expected = [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0],
    ]
    m = masks.cross_mask(decoder_segments, encoder_segments)
    assert m.shape == (1, 1, 4, 6)
    np.testing.assert_array_equal(as_int(m)[0, 0], expected)


def test_padding_mask_and_combine():
    q = jnp.array([[1, 1, 0]])
    k = jnp.array([[1, 0, 1]])
    np.testing.assert_array_equal(as_int(masks.padding_mask(q, k))[0, 0], [[1, 0, 1], [1, 0, 1], [0, 0, 0]])
    combined = masks.combine(masks.causal_mask(3), masks.padding_mask(q, k), None)
    np.testing.assert_array_equal(as_int(combined)[0, 0], [[1, 0, 0], [1, 0, 0], [0, 0, 0]])
    assert masks.combine(None, None) is None


def test_unpadded_bidirectional_needs_no_mask_and_bad_kind_fails():
    assert masks.self_attention_mask("bidirectional", 4) is None
    with pytest.raises(ValueError, match="unknown mask kind"):
        masks.self_attention_mask("sideways", 4)
    with pytest.raises(ValueError, match="bidirectional"):
        masks.self_attention_mask("prefix", 4)
