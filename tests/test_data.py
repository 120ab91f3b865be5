"""Sources build offline into the cache, datasets serve every architecture, bad data fails clearly."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from gpt2_jax import data, train
from gpt2_jax.data import datasets, sources, synthetic
from gpt2_jax.errors import CheckpointError, DataError
from gpt2_jax.experiment import Experiment
from tests.helpers import TEXT, tiny_config, write_corpus

DATA_DIR = Path(os.environ.get("GPT2_JAX_DATA_DIR", ""))


def cache() -> Path:
    return Path(os.environ["GPT2_JAX_CACHE_DIR"])


def test_tinyshakespeare_builds_offline_and_reads_back(shakespeare_path):
    files = sources.corpus_files("tinyshakespeare/input.txt", "", cache())
    assert files == [shakespeare_path]
    source = sources.text_corpus(files, 0.9, cache())
    train_text, val_text = source.texts("train"), source.texts("validation")
    assert (len(train_text), len(val_text)) == (1_003_854, 111_540)
    assert train_text + val_text == shakespeare_path.read_text()
    prepared = list((cache() / "tfds" / "gpt2_jax_text").rglob("*.array_record*"))
    assert prepared, "prepared as array_record in the cache"
    assert not any(str(p).startswith(str(DATA_DIR)) for p in prepared)


def test_text_folder_and_rebuild_when_inputs_change(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha " * 200)
    (folder / "b.txt").write_text("beta " * 200)
    (folder / "skip.md").write_text("not text")
    files = sources.corpus_files(str(folder), "", cache())
    assert [f.name for f in files] == ["a.txt", "b.txt"]
    first = sources.text_corpus(files, 0.5, cache())
    assert "alpha" in first.texts("train") and "beta" in first.texts("validation")
    (folder / "b.txt").write_text("gamma " * 200)
    second = sources.text_corpus(files, 0.5, cache())
    assert "gamma" in second.texts("validation") and "beta" not in second.texts("validation")
    assert first.builder.data_dir != second.builder.data_dir


def test_multi30k_builds_offline_both_directions():
    if not (DATA_DIR / "multi30k" / "train.de.gz").exists():
        pytest.fail("multi30k is missing from GPT2_JAX_DATA_DIR")
    source = sources.multi30k("", cache())
    sizes = {split: len(source.pairs(split)) for split in ("train", "validation", "test")}
    assert sizes == {"train": 29000, "validation": 1014, "test": 1000}
    de, en = source.pairs("train")[0]
    first_en = gzip.decompress((DATA_DIR / "multi30k" / "train.en.gz").read_bytes()).decode().splitlines()[0]
    assert en == first_en and de != en
    config = tiny_config(**{"data.dataset": "multi30k", "data.direction": "en-de", "data.tokenizer": "byte"})
    config.data.seq_len = 256
    ds = data.build(config)
    assert ds.tokenizer.decode(ds.examples["train"][0].prefix).startswith(en[:20])


def test_local_pairs_and_misaligned_files(tmp_path):
    src, tgt = tmp_path / "train.src", tmp_path / "train.tgt"
    src.write_text("".join(f"source {i}\n" for i in range(50)))
    tgt.write_text("".join(f"target {i}\n" for i in range(50)))
    config = tiny_config(**{"data.dataset": "pairs", "data.source_file": str(src), "data.target_file": str(tgt)})
    config.data.seq_len = 32
    ds = data.build(config)
    assert len(ds.examples["train"]) == 45 and len(ds.examples["validation"]) == 5
    tgt.write_text("".join(f"target {i}\n" for i in range(49)))
    with pytest.raises(DataError, match=r"misaligned: .*50 lines but .*49"):
        data.build(config)


def test_synthetic_tasks_are_deterministic_with_held_out_lengths():
    cfg = tiny_config().data.synthetic
    cfg.task, cfg.op_position, cfg.num_train, cfg.num_eval = "reverse,sort+shift", "last", 300, 50
    a, b = synthetic.transduction_splits(cfg), synthetic.transduction_splits(cfg)
    assert a == b
    train, validation, test = ({s for s, _ in a[split]} for split in ("train", "validation", "test"))
    assert len(test) == 50 and not train & validation and not train & test and not validation & test
    for source, target in a["train"]:
        body, op = (source[:-1], source[-1]) if source[-1] == "R" else (source[:-2], source[-2:])
        assert op in ("R", "SH")
        expected = body[::-1] if op == "R" else "".join(chr((ord(c) - 97 + 1) % 16 + 97) for c in sorted(body))
        assert target == expected
    assert all(13 <= len(t) <= 16 for _, t in a["test_ood"])
    with pytest.raises(DataError, match="unknown synthetic task 'rotate'"):
        synthetic.parse_tasks("copy,rotate")


def test_in_context_regression_is_linear_per_sequence():
    cfg = tiny_config().data.icl
    x, y = synthetic.regression_sequences(4, cfg.dim, cfg.num_examples, cfg.num_queries, 0.0, 0)
    for xs, ys in zip(x, y, strict=True):
        w, *_ = np.linalg.lstsq(xs[: cfg.num_examples], ys[: cfg.num_examples], rcond=None)
        np.testing.assert_allclose(xs[cfg.num_examples :] @ w, ys[cfg.num_examples :], atol=1e-3)


@pytest.mark.parametrize("distribution", ["uniform", "normal"])
def test_zero_predictor_mse_is_the_second_moment_of_y(distribution):
    x, y = synthetic.regression_sequences(4000, 6, 5, 5, 0.5, 0, distribution)
    if distribution == "uniform":
        assert x.min() >= -1 and x.max() <= 1
    expected = synthetic.zero_predictor_mse(6, 0.5, distribution)  # 6/3 + 0.25 or 6 + 0.25
    assert abs(float(np.mean(y**2)) / expected - 1) < 0.03
    with pytest.raises(DataError, match="x_distribution"):
        synthetic.regression_sequences(2, 6, 5, 5, 0.0, 0, "laplace")


@pytest.mark.parametrize("arch", ["decoder_only", "prefix_lm", "encoder_decoder"])
def test_regression_rows_hold_a_whole_sequence_with_loss_on_every_query(arch):
    overrides = {"data.dataset": "icl_regression", "data.icl.num_train": 64, "data.icl.num_eval": 7}
    overrides |= {"data.icl.num_examples": 5, "data.icl.num_queries": 3, "eval_batch_size": 4}
    config = tiny_config(arch, **overrides)
    ds = data.build(config)
    b = next(ds.train_iterator())
    x, y = ds.splits["train"]
    B, k, q, d = config.batch_size, 5, 3, config.data.icl.dim
    assert ds.vector_dim == d + 1 and ds.max_len == k + q
    # Which training sequence each row holds: its first context x.
    first = b["encoder_input_vectors" if arch == "encoder_decoder" else "input_vectors"][:, 0, :d]
    seq = [int(np.flatnonzero(np.all(x[:, 0] == row, axis=1))[0]) for row in first]
    if arch == "encoder_decoder":
        np.testing.assert_array_equal(b["encoder_input_vectors"][:, :, :d], x[seq, :k])
        np.testing.assert_array_equal(b["encoder_input_vectors"][:, :, d], y[seq, :k])
        queries, targets, weights = b["input_vectors"], b["target_values"], b["loss_weights"]
        assert queries.shape == (B, q, d + 1)
    else:
        rows = b["input_vectors"]
        assert rows.shape == (B, k + q, d + 1)
        np.testing.assert_array_equal(rows[:, :k, d], y[seq, :k])
        queries, targets, weights = rows[:, k:], b["target_values"][:, k:], b["loss_weights"][:, k:]
        assert b["loss_weights"][:, :k].sum() == 0, "no loss on the context"
    np.testing.assert_array_equal(queries[:, :, :d], x[seq, k:])
    assert np.all(queries[:, :, d] == 0), "every query's y is hidden"
    np.testing.assert_array_equal(targets, y[seq, k:])
    assert np.all(weights == 1)
    if arch == "prefix_lm":
        assert b["bidirectional"][0].tolist() == [1] * k + [0] * q
    # Evaluation: every query of every sequence once, padding rows without weight (7 sequences in batches of 4).
    batches = list(ds.eval_splits["validation"]())
    assert len(batches) == 2
    assert sum(b["loss_weights"].sum() for b in batches) == 7 * q
    assert set(ds.eval_splits) == {"validation", "test"}


def test_facts_forward_and_reverse_views():
    facts = {"data.dataset": "facts", "data.facts.num_facts": 20, "data.seq_len": 48}
    ds = data.build(tiny_config("decoder_only", **facts))
    fwd, rev = ds.examples["validation"][0], ds.examples["reverse"][0]
    tok = ds.tokenizer
    name_attr = tok.decode(fwd.prefix) + tok.decode(fwd.continuation)
    assert name_attr.endswith(".") and " is " in name_attr
    name, attr = name_attr[:-1].split(" is ")
    assert tok.decode(rev.prefix) == f"{attr} is " and tok.decode(rev.continuation) == f"{name}."
    mlm = data.build(tiny_config("encoder_only", **facts))
    tokens, hidden = mlm.examples["reverse"][0].masked_view
    assert tok.decode(tokens[hidden]) == name, "the masked LM fills in the name before 'is'"


def test_facts_control_trains_both_directions_and_ranking_questions_hold_every_answer():
    facts = {"data.dataset": "facts", "data.facts.num_facts": 6, "data.seq_len": 48}
    forward = data.build(tiny_config("decoder_only", **facts))
    both = data.build(tiny_config("decoder_only", **facts, **{"data.facts.directions": "both"}))
    tok = forward.tokenizer
    said = {tok.decode(s) for s in forward.statements}
    assert len(said) == 6 and {tok.decode(s) for s in both.statements[:6]} == said
    for statement in both.statements[6:]:
        attr, name = tok.decode(statement)[:-1].split(" is ")
        assert f"{name} is {attr}." in said, "the control adds every statement reversed"
    for split in ("validation", "reverse"):
        for question, (batch, right) in enumerate(forward.ranking_questions(split)):
            assert right == question and batch["input_tokens"].shape[0] == 6
            answers = [tok.decode(t[w > 0]) for t, w in zip(batch["target_tokens"], batch["loss_weights"], strict=True)]
            truth = forward.examples[split][question]
            assert answers[right] == tok.decode(truth.continuation)
            assert len(set(answers)) == 6, "every fact's answer is one candidate"
            asked = {tok.decode(t[: len(truth.prefix)]) for t in batch["input_tokens"]}
            assert asked == {tok.decode(truth.prefix)}, "every row asks the same question"


def test_packed_iterator_restores_exactly():
    config = tiny_config("encoder_decoder", **{"data.dataset": "synthetic", "data.seq_len": 32})
    config.data.synthetic.num_train, config.data.synthetic.num_eval = 200, 20
    ds = data.build(config)
    it = ds.train_iterator()
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(40)]  # crosses an epoch boundary
    assert it.get_state()["epoch"] >= 1
    resumed = ds.train_iterator(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    row = next(resumed)
    assert row["segment_ids"].max() > 1, "short examples are packed"


def test_every_eval_example_is_scored_once():
    config = tiny_config("prefix_lm", **{"data.dataset": "synthetic", "data.seq_len": 32})
    config.data.synthetic.num_train, config.data.synthetic.num_eval = 200, 37
    ds = data.build(config)
    batches = list(ds.eval_splits["validation"]())
    assert sum(int((b["segment_ids"].max(axis=1) > 0).sum()) for b in batches) == 37
    assert set(ds.eval_splits) == {"validation", "test", "test_ood"}


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"\xff\xfe bad bytes", "not UTF-8"),
        (b"too short", "fewer than one context window"),
    ],
)
def test_bad_corpus_gives_a_clear_error(tmp_path, content, match):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        data.build(tiny_config(corpus=path))


def test_vocabulary_that_does_not_match_the_checkpoint_is_refused(tmp_path):
    corpus = write_corpus(tmp_path)
    config = tiny_config(corpus=corpus, num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2)
    train.train_and_evaluate(config, tmp_path / "run")
    corpus.write_text((TEXT + "XYZ#@!\n") * 40)  # same file, wider alphabet
    with pytest.raises(CheckpointError, match="the tokenizer built from the data differs"):
        train.train_and_evaluate(config, tmp_path / "run")
    # Without the run's data fingerprints the checkpoint's own signature still refuses it.
    (tmp_path / "run" / "data_fingerprint.json").unlink()
    with pytest.raises(CheckpointError, match=r"vocab_size is .* in the checkpoint but .* in this run"):
        train.train_and_evaluate(config, tmp_path / "run")


def test_vocabulary_size_in_config_must_match_tokenizer(tmp_path):
    corpus = write_corpus(tmp_path)
    with pytest.raises(ValueError, match=r"vocab_size=999 but the 'char' tokenizer has \d+ tokens"):
        Experiment(tiny_config(corpus=corpus, **{"model.vocab_size": 999}))


def test_text_datasets_serve_every_objective(tmp_path):
    corpus = write_corpus(tmp_path)
    for arch, objective in [("decoder_only", "lm"), ("encoder_only", "mlm"), ("encoder_decoder", "span_corruption")]:
        ds = data.build(tiny_config(arch, corpus, **{"data.objective": objective, "data.num_sentinels": 4}))
        assert isinstance(ds, datasets.TextDataset)
        b = next(ds.train_iterator())
        assert b["loss_weights"].sum() > 0


def test_a_synthetic_mixture_is_also_evaluated_per_operation(tmp_path):
    from gpt2_jax.data import synthetic

    config = tiny_config("encoder_decoder")
    config.data.dataset = "synthetic"
    config.data.synthetic.task, config.data.synthetic.op_position = "copy,reverse+sort", "last"
    config.data.synthetic.num_train, config.data.synthetic.num_eval = 64, 30
    splits = data.paired_splits(config, tmp_path)
    assert {"validation_copy", "validation_reverse_sort", "test_copy", "test_reverse_sort"} <= set(splits)
    for split in ("validation", "test"):
        per_op = splits[f"{split}_copy"] + splits[f"{split}_reverse_sort"]
        assert sorted(per_op) == sorted(splits[split])
    for source, target in splits["validation_copy"]:
        assert source.endswith("C") and target == source[:-1]
    for source, target in splits["validation_reverse_sort"]:
        assert source.endswith("RS") and target == "".join(sorted(source[:-2]))
    assert synthetic.operation_splits("copy", splits["validation"]) == {}


@pytest.mark.parametrize("arch", ["decoder_only", "prefix_lm", "encoder_decoder"])
def test_continuations_are_scored_after_each_cut(tmp_path, arch):
    config = tiny_config(arch, write_corpus(tmp_path), **{"data.eval_cuts": (0.25, 0.75)})  # 16 positions: cuts 4, 12
    dataset = data.build(config)
    splits = dataset.eval_splits
    assert {"continuation_cut_4", "continuation_cut_12"} <= set(splits)
    for cut in (4, 12):
        batch = next(splits[f"continuation_cut_{cut}"]())
        scored = batch["loss_weights"].sum(axis=1)
        assert set(scored[scored > 0].tolist()) == {float(16 + 1 - cut)}, "the tokens after the cut, each once"
    config.num_train_steps = 2
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["eval"]["continuation_cut_4"]["loss_tokens"] > results["eval"]["continuation_cut_12"]["loss_tokens"]


@pytest.mark.parametrize("arch", ["prefix_lm", "encoder_decoder"])
def test_the_mixture_objective_gives_a_share_of_rows_a_full_lm_loss(tmp_path, arch):
    corpus = write_corpus(tmp_path)
    shares = {}
    for share in (0.0, 0.5, 1.0):
        config = tiny_config(arch, corpus, **{"data.objective": "mixture", "data.mixture_full_lm_share": share})
        config.batch_size = 64
        batch = next(data.build(config).train_iterator())
        scored = batch["loss_weights"].sum(axis=1)
        full = scored == 16  # a row cut after its first token: every one of its 16 targets carries loss
        shares[share] = full.mean()
        if arch == "prefix_lm":
            prefix = batch["bidirectional"].sum(axis=1)
            assert np.all(prefix[full] == 1) and np.all(prefix[~full] > 1)
    assert shares[1.0] == 1.0 and shares[0.0] < 0.2 and 0.25 < shares[0.5] < 0.75
