"""Objectives put loss on the same tokens for every architecture; evaluation covers the whole split."""

import numpy as np
import pytest

from gpt2_jax import batch as batch_lib
from gpt2_jax.data import objectives, text
from gpt2_jax.data.tokenizers import ByteTokenizer, CharTokenizer
from tests.helpers import tiny_config, write_corpus

TOK = ByteTokenizer()
CAUSAL_ARCHS = ("decoder_only", "prefix_lm", "encoder_decoder")


def loss_targets(b):
    """The multiset of (row, token) pairs that carry loss."""
    rows, cols = np.nonzero(b["loss_weights"])
    return sorted(zip(rows.tolist(), b["target_tokens"][rows, cols].tolist(), strict=True))


@pytest.mark.parametrize("random_cuts", [False, True])
def test_same_loss_tokens_for_every_architecture(random_cuts):
    rng = np.random.default_rng(0)
    windows = rng.integers(TOK.num_specials, TOK.vocab_size, size=(6, 17))
    cuts = rng.integers(1, 17, size=6) if random_cuts else np.full(6, 8)
    batches = {arch: objectives.lm_batch(windows, cuts, arch, TOK) for arch in CAUSAL_ARCHS}
    reference = loss_targets(batches["decoder_only"])
    assert len(reference) == int(sum(17 - cuts))
    for arch, b in batches.items():
        batch_lib.validate(b, arch)
        assert loss_targets(b) == reference, arch
    # The continuation is exactly what gets loss: w[cut:] for each row.
    for row, cut in enumerate(cuts):
        got = [t for r, t in reference if r == row]
        assert sorted(got) == sorted(windows[row, cut:].tolist())


def test_decoder_only_full_lm_puts_loss_on_every_token():
    windows = np.arange(10, 27)[None]
    b = objectives.lm_batch(windows, np.array([8]), "decoder_only", TOK, loss="all")
    assert b["loss_weights"].sum() == 16
    np.testing.assert_array_equal(b["target_tokens"][0], windows[0, 1:])
    np.testing.assert_array_equal(b["input_tokens"][0], windows[0, :-1])
    with pytest.raises(ValueError, match="only meaningful for decoder_only"):
        objectives.lm_batch(windows, np.array([8]), "prefix_lm", TOK, loss="all")


def test_encoder_decoder_layout_literal():
    windows = np.array([[10, 11, 12, 13, 14, 15]])
    b = objectives.lm_batch(windows, np.array([2]), "encoder_decoder", TOK, encoder_len=3, decoder_len=5)
    assert b["encoder_input_tokens"].tolist() == [[10, 11, 0]]
    assert b["encoder_segment_ids"].tolist() == [[1, 1, 0]]
    assert b["input_tokens"].tolist() == [[TOK.bos_id, 12, 13, 14, 0]]
    assert b["target_tokens"].tolist() == [[12, 13, 14, 15, 0]]
    assert b["loss_weights"].tolist() == [[1, 1, 1, 1, 0]]
    assert b["segment_ids"].tolist() == [[1, 1, 1, 1, 0]]


def test_prefix_lm_marker_covers_prefix_inputs():
    windows = np.array([[10, 11, 12, 13, 14, 15]])
    b = objectives.lm_batch(windows, np.array([2]), "prefix_lm", TOK)
    assert b["bidirectional"].tolist() == [[1, 1, 0, 0, 0]]
    assert b["loss_weights"].tolist() == [[0, 1, 1, 1, 1]]


def test_mlm_corrupts_fixed_share_bert_style():
    rng = np.random.default_rng(0)
    windows = rng.integers(TOK.num_specials, TOK.vocab_size, size=(2000, 20))
    b = objectives.mlm_batch(windows, TOK, 0.15, rng)
    assert np.all(b["loss_weights"].sum(1) == 3)
    chosen = b["loss_weights"] > 0
    assert np.all(b["input_tokens"][~chosen] == windows[~chosen])
    masked = np.mean(b["input_tokens"][chosen] == TOK.mask_id)
    kept = np.mean(b["input_tokens"][chosen] == windows[chosen])
    assert masked == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.02)  # (plus the rare random draw of the same token)
    np.testing.assert_array_equal(b["target_tokens"], windows)


def text_lm(tmp_path, arch, **overrides):
    corpus = write_corpus(tmp_path, repeats=8)
    config = tiny_config(arch, corpus, **overrides)
    data = text.TextLM(config.data, arch, config.seed, config.batch_size, config.eval_batch_size)
    return data, corpus


@pytest.mark.parametrize("arch", ["decoder_only", "encoder_only"])
def test_eval_scores_every_validation_token_exactly_once(tmp_path, arch):
    data, _ = text_lm(tmp_path, arch, **{"data.objective": "auto"})
    batches = list(data.eval_batches())
    shapes = {b["input_tokens"].shape for b in batches}
    assert len(shapes) == 1, "every eval batch has the same shape (one compilation)"
    if arch == "decoder_only":
        weighted_targets = np.concatenate([b["target_tokens"][b["loss_weights"] > 0] for b in batches])
        assert len(weighted_targets) == len(data.eval_ids) - 1
        np.testing.assert_array_equal(weighted_targets, data.eval_ids[1:])
    else:
        covered = sum(int(b["segment_ids"].sum()) for b in batches)
        assert covered == len(data.eval_ids)
    again = list(data.eval_batches())
    for a, b in zip(batches, again, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_cut_objective_eval_scores_same_tokens_for_every_arch(tmp_path, arch):
    continuation = {"data.decoder_only_loss": "continuation"}
    ref, _ = text_lm(tmp_path, "decoder_only", **continuation)
    data, _ = text_lm(tmp_path, arch, **continuation)
    ref_targets = [loss_targets(b) for b in ref.eval_batches()]
    got = [loss_targets(b) for b in data.eval_batches()]
    assert got == ref_targets


def test_training_batches_are_a_function_of_seed_and_step(tmp_path):
    data, _ = text_lm(tmp_path, "prefix_lm", **{"data.random_cut": True})
    a, b, c = data.train_batch(7), data.train_batch(7), data.train_batch(8)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["input_tokens"], c["input_tokens"])
    assert a["input_tokens"].shape == (8, 16)


def test_char_tokenizer_round_trip_and_unknown_char():
    tok = CharTokenizer.from_text("hello world")
    ids = tok.encode("hello")
    assert ids.min() >= tok.num_specials and tok.decode(ids) == "hello"
    assert tok.vocab_size == tok.num_specials + len(set("hello world"))
    with pytest.raises(ValueError, match="not in this char tokenizer"):
        tok.encode("z")
