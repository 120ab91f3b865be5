"""Objectives put loss on the same tokens for every architecture; evaluation covers the whole split."""

import numpy as np
import pytest

from gpt2_jax import batch as batch_lib
from gpt2_jax import data
from gpt2_jax.data import objectives
from gpt2_jax.data.tokenizers import ByteTokenizer
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


def text_dataset(tmp_path, arch, **overrides):
    corpus = write_corpus(tmp_path, repeats=8)
    return data.build(tiny_config(arch, corpus, **overrides))


@pytest.mark.parametrize("arch", ["decoder_only", "encoder_only"])
def test_eval_scores_every_validation_token_exactly_once(tmp_path, arch):
    ds = text_dataset(tmp_path, arch)
    batches = list(ds.eval_splits["validation"]())
    shapes = {b["input_tokens"].shape for b in batches}
    assert len(shapes) == 1, "every eval batch has the same shape (one compilation)"
    if arch == "decoder_only":
        weighted_targets = np.concatenate([b["target_tokens"][b["loss_weights"] > 0] for b in batches])
        assert len(weighted_targets) == len(ds.eval_ids) - 1
        np.testing.assert_array_equal(weighted_targets, ds.eval_ids[1:])
    else:
        covered = sum(int(b["segment_ids"].sum()) for b in batches)
        assert covered == len(ds.eval_ids)
    again = list(ds.eval_splits["validation"]())
    for a, b in zip(batches, again, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_cut_objective_eval_scores_same_tokens_for_every_arch(tmp_path, arch):
    continuation = {"data.decoder_only_loss": "continuation"}
    ref = text_dataset(tmp_path, "decoder_only", **continuation)
    ds = text_dataset(tmp_path, arch, **continuation)
    ref_targets = [loss_targets(b) for b in ref.eval_splits["validation"]()]
    got = [loss_targets(b) for b in ds.eval_splits["validation"]()]
    assert got == ref_targets


def test_training_batches_are_a_function_of_seed_and_step(tmp_path):
    ds = text_dataset(tmp_path, "prefix_lm", **{"data.random_cut": True})
    it = ds.train_iterator()
    a = next(it)
    b, c = next(ds.train_iterator({"step": 0})), next(ds.train_iterator({"step": 1}))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["input_tokens"], c["input_tokens"])
    assert a["input_tokens"].shape == (8, 16)
    assert it.get_state() == {"step": 1}


def test_seq2seq_examples_give_every_arch_the_same_targets_and_packing_respects_segments():
    tok = ByteTokenizer()
    pairs = [("ab", "xyz"), ("cde", "w"), ("f", "uv")]
    examples = [objectives.seq2seq_example(tok.encode(s), tok.encode(t), tok) for s, t in pairs]
    expected = sorted(t for _, tgt in pairs for t in [*tok.encode(tgt).tolist(), tok.eos_id])
    for arch in (*CAUSAL_ARCHS, "encoder_only"):
        for pack in (False, True):
            rows = 1 if pack else 3
            b = objectives.convert(examples, arch, tok, rows, 20, 20, pack=pack)
            got = sorted(b["target_tokens"][b["loss_weights"] > 0].tolist())
            assert got == expected, (arch, pack)
            if pack:
                assert sorted(set(b["segment_ids"][0].tolist()) - {0}) == [1, 2, 3]


def test_packed_row_literal_layout_prefix_lm():
    tok = ByteTokenizer()
    a = objectives.Example(np.array([10, 11]), np.array([12, 2]))
    b = objectives.Example(np.array([20]), np.array([21, 22, 2]))
    out = objectives.convert([a, b], "prefix_lm", tok, rows=1, length=8, pack=True)
    assert out["input_tokens"].tolist() == [[10, 11, 12, 20, 21, 22, 0, 0]]
    assert out["target_tokens"].tolist() == [[11, 12, 2, 21, 22, 2, 0, 0]]
    assert out["loss_weights"].tolist() == [[0, 1, 1, 1, 1, 1, 0, 0]]
    assert out["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 2, 0, 0]]
    assert out["positions"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 0]]
    assert out["bidirectional"].tolist() == [[1, 1, 0, 1, 0, 0, 0, 0]]


def test_packed_encoder_decoder_streams_share_segment_ids():
    tok = ByteTokenizer()
    a = objectives.Example(np.array([10, 11, 3]), np.array([12, 2]))
    b = objectives.Example(np.array([20, 3]), np.array([21, 22, 2]))
    # Footprints 5 + 5 (encoder-only's layout): both fit a row of 10, not of 9.
    out = objectives.convert([a, b], "encoder_decoder", tok, rows=1, length=10, encoder_length=10, pack=True)
    assert out["encoder_input_tokens"].tolist() == [[10, 11, 3, 20, 3, 0, 0, 0, 0, 0]]
    assert out["encoder_segment_ids"].tolist() == [[1, 1, 1, 2, 2, 0, 0, 0, 0, 0]]
    assert out["input_tokens"].tolist() == [[tok.bos_id, 12, tok.bos_id, 21, 22, 0, 0, 0, 0, 0]]
    assert out["target_tokens"].tolist() == [[12, 2, 21, 22, 2, 0, 0, 0, 0, 0]]
    assert out["segment_ids"].tolist() == [[1, 1, 2, 2, 2, 0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="cannot hold"):
        objectives.convert([a, b], "encoder_decoder", tok, rows=1, length=9, encoder_length=9, pack=True)


def random_examples(n: int, max_len: int, min_prefix: int = 1, seed: int = 0) -> list[objectives.Example]:
    """``n`` examples of random tokens: prefixes of ``min_prefix..max_len-1``, continuations of ``2..max_len-1``."""
    rng = np.random.default_rng(seed)
    return [
        objectives.Example(
            rng.integers(10, 200, size=rng.integers(min_prefix, max_len)),
            rng.integers(10, 200, size=rng.integers(2, max_len)),
        )
        for _ in range(n)
    ]


def test_packing_groups_the_same_examples_into_rows_for_every_architecture():
    """An encoder-decoder's target-only decoder rows must not pack more examples per step than a decoder-only's."""
    tok = ByteTokenizer()
    examples = random_examples(40, max_len=12, min_prefix=2)

    def rows_of(arch):
        builder = objectives.RowBuilder(arch, tok, rows=4, length=40, encoder_length=40, pack=True)
        placed = 0
        while placed < len(examples) and builder.add(examples[placed]):
            placed += 1
        b = builder.batch()
        targets = [sorted(b["target_tokens"][r][b["loss_weights"][r] > 0].tolist()) for r in range(4)]
        return placed, builder.count.tolist(), targets

    ref = rows_of("decoder_only")
    assert ref[0] < len(examples) and max(ref[1]) > 1, "the batch filled up with packed rows"
    for arch in ("prefix_lm", "encoder_decoder", "encoder_only"):
        assert rows_of(arch) == ref, arch


def test_encoder_only_fills_the_continuation_behind_mask_tokens():
    tok = ByteTokenizer()
    ex = objectives.Example(np.array([10, 11, 3]), np.array([12, 2]))
    out = objectives.convert([ex], "encoder_only", tok, rows=1, length=6)
    assert out["input_tokens"].tolist() == [[10, 11, 3, tok.mask_id, tok.mask_id, 0]]
    assert out["target_tokens"].tolist() == [[10, 11, 3, 12, 2, 0]]
    assert out["loss_weights"].tolist() == [[0, 0, 0, 1, 1, 0]]


def test_span_corruption_matches_t5():
    tok = ByteTokenizer(num_sentinels=10)
    rng = np.random.default_rng(0)
    tokens = np.arange(100, 140)
    ex = objectives.span_corruption(tokens, tok, 0.15, 3.0, rng)
    sentinels = set(tok.sentinel_ids)
    noise = [t for t in ex.continuation.tolist() if t not in sentinels and t != tok.eos_id]
    kept = [t for t in ex.prefix.tolist() if t not in sentinels]
    assert len(noise) == 6, "15% of 40 tokens"
    assert sorted(noise + kept) == tokens.tolist(), "every token is either kept or spelled out in the target"
    spans = [t for t in ex.prefix.tolist() if t in sentinels]
    assert spans == [t for t in ex.continuation.tolist() if t in sentinels] == list(tok.sentinel_ids[: len(spans)])
    assert len(spans) == 2, "mean span length 3"
    assert ex.continuation[-1] == tok.eos_id
    with pytest.raises(ValueError, match="num_sentinels"):
        objectives.span_corruption(tokens, ByteTokenizer(), 0.15, 3.0, rng)


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_span_corruption_text_dataset_same_targets(tmp_path, arch):
    opts = {"data.objective": "span_corruption", "data.num_sentinels": 8, "data.seq_len": 24}
    ref = next(text_dataset(tmp_path, "decoder_only", **opts).train_iterator())
    got = next(text_dataset(tmp_path, arch, **opts).train_iterator())
    assert loss_targets(got) == loss_targets(ref)


@pytest.mark.parametrize("arch", ["decoder_only", "prefix_lm", "encoder_decoder", "encoder_only"])
def test_packed_rows_never_attend_across_examples_through_the_masks(arch):
    from gpt2_jax import masks

    tok = ByteTokenizer()
    examples = random_examples(12, max_len=5)
    b = objectives.convert(examples[:3], arch, tok, rows=1, length=32, encoder_length=32, pack=True)
    seg = b["segment_ids"]
    kind = {"prefix_lm": "prefix", "encoder_only": "bidirectional"}.get(arch, "causal")
    m = np.asarray(masks.self_attention_mask(kind, seg.shape[1], seg, b.get("bidirectional")))[0, 0]
    q, k = np.nonzero(m)
    assert len(q) > 0 and np.all(seg[0, q] == seg[0, k]) and np.all(seg[0, q] > 0)
    if arch == "encoder_decoder":
        enc = b["encoder_segment_ids"]
        c = np.asarray(masks.cross_mask(seg, enc))[0, 0]
        q, k = np.nonzero(c)
        assert np.all(seg[0, q] == enc[0, k]) and set(seg[0, q]) == {1, 2, 3}


@pytest.mark.parametrize("arch", ["decoder_only", "prefix_lm"])
def test_restarted_target_positions_of_a_packed_row(arch):
    from gpt2_jax.data.objectives import Example, RowBuilder
    from gpt2_jax.data.tokenizers import ByteTokenizer

    tok = ByteTokenizer()
    a, b, c, x, y, z = (tok.encode(ch)[0] for ch in "abcxyz")
    first = Example(np.array([a, b, tok.sep_id]), np.array([x, y, tok.eos_id]))  # inputs a b <sep> x y
    second = Example(np.array([c, tok.sep_id]), np.array([z, tok.eos_id]))  # inputs c <sep> z
    rows = {}
    for mode in ("continue", "restart"):
        builder = RowBuilder(arch, tok, 1, 10, pack=True, target_positions=mode)  # footprints 6 + 4
        assert builder.add(first) and builder.add(second)
        rows[mode] = builder.batch()
    assert rows["continue"]["segment_ids"][0].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 0, 0]
    assert rows["continue"]["positions"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 0]
    # <sep> predicts the first target token: position 0, where an encoder-decoder's <bos> sits.
    assert rows["restart"]["positions"][0].tolist() == [0, 1, 0, 1, 2, 0, 0, 1, 0, 0]
    for key in rows["continue"]:
        if key != "positions":
            np.testing.assert_array_equal(rows["continue"][key], rows["restart"][key])


def test_data_target_positions_restart_puts_every_separator_at_position_zero(tmp_path):
    from configs import synthetic

    config = synthetic.get_config("copy")
    config.data.synthetic.num_train, config.data.synthetic.num_eval = 64, 16
    config.data.target_positions, config.batch_size, config.model.arch = "restart", 8, "decoder_only"
    dataset = data.build(config)
    batch = next(dataset.train_iterator())
    at_separator = batch["input_tokens"] == dataset.tokenizer.sep_id
    assert at_separator.sum() >= 8 and np.all(batch["positions"][at_separator] == 0)
    after = np.roll(at_separator, 1, axis=1)  # the first target token, fed as input
    assert np.all(batch["positions"][after & (batch["segment_ids"] > 0)] == 1)
