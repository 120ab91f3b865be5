"""Data: sources, tokenizers and objectives that produce the batch schema.

:func:`build` turns ``config.data`` into a dataset (see
:mod:`gpt2_jax.data.datasets` for the interface every dataset offers).
"""

from __future__ import annotations

from pathlib import Path

from gpt2_jax.data import datasets, paths, sources, synthetic, tokenizers
from gpt2_jax.errors import DataError

TEXT_DATASETS = ("text",)
PAIRED_DATASETS = ("multi30k", "pairs", "synthetic")
DATASETS = TEXT_DATASETS + PAIRED_DATASETS + ("facts", "icl_regression")


def objective(config) -> str:
    """The objective a config asks for, with ``auto`` resolved from the dataset and architecture."""
    d, arch = config.data, config.model.arch
    if d.dataset in PAIRED_DATASETS:
        return "seq2seq"
    if d.dataset == "facts":
        return "facts"
    if d.dataset == "icl_regression":
        return "regression"
    if d.objective == "auto":
        return "mlm" if arch == "encoder_only" else "lm"
    return d.objective


def decoder_only_loss(config) -> str:
    """Where a decoder-only model takes loss: every token for plain LM on text, else the continuation."""
    d = config.data
    if config.model.arch != "decoder_only":
        return "continuation"
    if d.decoder_only_loss == "auto":
        return "all" if objective(config) == "lm" else "continuation"
    return d.decoder_only_loss


def _split_pairs(pairs: list[tuple[str, str]], fraction: float) -> dict[str, list[tuple[str, str]]]:
    cut = int(len(pairs) * fraction)
    if cut == 0 or cut == len(pairs):
        raise DataError(f"{len(pairs)} pairs are too few to split into training and validation")
    return {"train": pairs[:cut], "validation": pairs[cut:]}


def paired_splits(config, cache: Path) -> dict[str, list[tuple[str, str]]]:
    d = config.data
    if d.dataset == "multi30k":
        source = sources.multi30k(d.data_dir, cache)
        if d.direction not in ("de-en", "en-de"):
            raise DataError(f"config.data.direction must be 'de-en' or 'en-de', got {d.direction!r}")
        splits = {split: source.pairs(split) for split in ("train", "validation", "test")}
        if d.direction == "en-de":
            splits = {k: [(t, s) for s, t in v] for k, v in splits.items()}
        return splits
    if d.dataset == "pairs":
        if not d.source_file or not d.target_file:
            raise DataError("dataset 'pairs' needs config.data.source_file and config.data.target_file")
        files = {"train": (paths.resolve(d.source_file, d.data_dir), paths.resolve(d.target_file, d.data_dir))}
        if d.eval_source_file or d.eval_target_file:
            files["validation"] = (
                paths.resolve(d.eval_source_file, d.data_dir),
                paths.resolve(d.eval_target_file, d.data_dir),
            )
        source = sources.parallel_corpus(files, cache)
        if "validation" in files:
            return {split: source.pairs(split) for split in files}
        return _split_pairs(source.pairs("train"), d.train_fraction)
    params = {**d.synthetic.to_dict(), "splits": synthetic.TRANSDUCTION_SPLITS}
    source = sources.generated_pairs("synthetic", params, lambda: synthetic.transduction_splits(d.synthetic), cache)
    splits = {split: source.pairs(split) for split in source.splits}
    # A mixture is also scored per operation: validation_copy, test_copy, validation_reverse, ...
    for split in ("validation", "test"):
        for name, pairs in synthetic.operation_splits(d.synthetic.task, splits[split]).items():
            splits[f"{split}_{name}"] = pairs
    return splits


def _fingerprinted(dataset, *contents):
    """``dataset`` with ``fingerprint``, a hash of the examples it serves (a resume checks it is unchanged)."""
    dataset.fingerprint = sources.fingerprint(*contents)
    return dataset


def build(config):
    """The dataset a run config asks for (sources are prepared into the cache on first use)."""
    d = config.data
    cache = paths.cache_dir(d.cache_dir)
    if d.dataset == "text":
        files = sources.corpus_files(d.corpus, d.data_dir, cache)
        source = sources.text_corpus(files, d.train_fraction, cache)
        train_text = source.texts("train")
        validation_text = source.texts("validation")
        alphabet_text = train_text + validation_text if d.tokenizer == "char" else train_text
        tokenizer = tokenizers.build(d, alphabet_text, cache)
        dataset = datasets.TextDataset(config, source, tokenizer, objective(config), decoder_only_loss(config))
        return _fingerprinted(dataset, train_text, validation_text)
    if d.dataset in PAIRED_DATASETS:
        splits = paired_splits(config, cache)
        fit = splits if d.tokenizer == "char" else {"train": splits["train"]}
        text = "\n".join(f"{s}\n{t}" for pairs in fit.values() for s, t in pairs)
        tokenizer = tokenizers.build(d, text, cache)
        return _fingerprinted(datasets.PairedDataset(config, splits, tokenizer, decoder_only_loss(config)), splits)
    if d.dataset == "facts":
        params = {"num": d.facts.num_facts, "seed": d.facts.seed}
        source = sources.generated_pairs(
            "facts", params, lambda: {"train": synthetic.facts(d.facts.num_facts, d.facts.seed)}, cache
        )
        facts = source.pairs("train")
        tokenizer = tokenizers.build(d, "\n".join(f"{n} is {a}." for n, a in facts), cache)
        return _fingerprinted(datasets.FactsDataset(config, facts, tokenizer), facts)
    if d.dataset == "icl_regression":
        source = sources.generated_vectors(
            "icl_regression", d.icl.to_dict(), lambda: synthetic.regression_splits(d.icl), cache
        )
        splits = {split: source.vectors(split) for split in source.splits}
        arrays = [a for split in sorted(splits) for a in (split, *splits[split])]
        return _fingerprinted(datasets.RegressionDataset(config, splits, tokenizers.ByteTokenizer()), *arrays)
    raise DataError(f"unknown config.data.dataset {d.dataset!r}; choose one of {', '.join(DATASETS)}")
