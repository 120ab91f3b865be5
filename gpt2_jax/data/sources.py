"""Data sources as ``tensorflow-datasets`` builders, written as ``array_record`` and read with random access.

TensorFlow is not needed: builders write ``array_record`` files and are read
through ``builder.as_data_source`` (no ``tf.data``).  One builder class (a
``GeneratorBasedBuilder`` fed by a Python function, :func:`_builder_class`)
with three feature layouts covers every source:

* text, :func:`text_corpus` -- a plain-text corpus (tiny Shakespeare, any text
  file or folder of ``.txt`` files), split by characters into train/validation;
* pairs, :func:`parallel_corpus`, :func:`multi30k`, :func:`generated_pairs` --
  aligned (source, target) text pairs: Multi30k, local pairs of files, and the
  synthetic sequence tasks;
* vectors, :func:`generated_vectors` -- real-valued sequences (in-context
  regression).

Prepared datasets live under the writable cache directory (never the data
directory, which may be read-only).  Each builder's config name is a
fingerprint of its inputs (file contents, task parameters), so changing an
input builds a new dataset instead of reusing a stale one.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpt2_jax.data import paths
from gpt2_jax.errors import DataError

log = logging.getLogger(__name__)

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"
MULTI30K_SPLITS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}
CHUNK_CHARS = 1 << 20  # text is stored in chunks of at most 1M characters
BUILDER_VERSION = "1.0.0"


# --------------------------------------------------------------------------- files


def read_text_file(path: Path) -> str:
    """A UTF-8 (optionally gzipped) text file, with errors that say what to change."""
    if not path.exists():
        raise DataError(
            f"data file {path} does not exist; set config.data.corpus (or the file fields of config.data) to an "
            f"existing file, or point ${paths.DATA_DIR_ENV} (or config.data.data_dir) at the folder that holds it"
        )
    if path.is_dir():
        raise DataError(f"{path} is a directory where a text file was expected")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path} is not a valid gzip file ({e})") from None
    if not raw.strip():
        raise DataError(f"data file {path} is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (invalid byte {raw[e.start : e.start + 1]!r} at offset {e.start}); "
            "convert it to UTF-8"
        ) from None


def fetch(url: str, destination: Path) -> Path:
    """Download ``url`` to ``destination`` (once) when the machine is online."""
    if destination.exists():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", url)
    tmp = destination.with_name(destination.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            tmp.write_bytes(response.read())
    except OSError as e:
        raise DataError(f"{destination.name} is not in the data directory and downloading {url} failed ({e})") from None
    tmp.replace(destination)
    return destination


def find_or_fetch(relative: str, url: str, data_dir: str, cache_dir: Path) -> Path:
    """``relative`` under the data directory, else a copy downloaded into the cache."""
    local = paths.resolve(relative, data_dir)
    if local.exists():
        return local
    return fetch(url, cache_dir / "downloads" / relative)


def fingerprint(*parts: Any) -> str:
    """A short hash of files (by content), arrays (by value) and parameters."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(str(part.name).encode())
            h.update(part.read_bytes())
        elif isinstance(part, np.ndarray):
            h.update(str((part.dtype, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- builders


def _tfds():
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    return tfds


def _builder_class(name: str, features: Callable[[Any], Any]):
    """A ``GeneratorBasedBuilder`` whose splits come from a Python function (examples kept in order)."""
    tfds = _tfds()

    builder_name = name

    class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = builder_name
        VERSION = tfds.core.Version(BUILDER_VERSION)
        RELEASE_NOTES = {BUILDER_VERSION: "gpt2_jax builder"}  # noqa: RUF012

        def __init__(self, *, splits: Callable[[], dict[str, Iterable[dict]]], **kwargs):
            self._splits = splits
            super().__init__(**kwargs)

        def _info(self):
            # Examples keep their order: text chunks form one stream, pairs stay aligned with their files.
            return tfds.core.DatasetInfo(builder=self, features=features(tfds), disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(examples) for split, examples in self._splits().items()}

        def _generate_examples(self, examples):
            yield from enumerate(examples)

    return _Builder


class _QuietTfds(logging.Filter):
    """TFDS warns about every builder config that is not in a registry; ours never are."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Using custom data configuration", "Variant folder"))


@contextlib.contextmanager
def _scratch_temp_dir(cache_dir: Path) -> Iterator[None]:
    """Temporary files in a folder of the cache that is removed afterwards.

    A new TFDS builder makes an empty ``tempfile.mkdtemp()`` folder that it
    never removes (``DatasetInfo.initialize_from_bucket``).
    """
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        tempfile.tempdir = scratch
        try:
            yield
        finally:
            tempfile.tempdir = previous


def _prepare(name: str, features, config_name: str, cache_dir: Path, splits: Callable[[], dict]) -> Any:
    tfds = _tfds()
    logging.getLogger("absl").addFilter(_QuietTfds())
    cls = _builder_class(name, features)
    config = tfds.core.BuilderConfig(name=config_name, description=name)
    # Parallel runs of a sweep may prepare the same dataset at once: one builds, the others wait and read.
    with paths.locked(cache_dir / "tfds" / f"{name}-{config_name}.lock"), _scratch_temp_dir(cache_dir):
        builder = cls(splits=splits, data_dir=str(cache_dir / "tfds"), config=config, file_format="array_record")
        if not builder.is_prepared():
            log.info("preparing %s/%s in %s", name, config_name, cache_dir / "tfds")
            with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its progress
                builder.download_and_prepare()
    return builder


def _text_features(tfds):
    return tfds.features.FeaturesDict({"text": tfds.features.Text()})


def _pair_features(tfds):
    return tfds.features.FeaturesDict({"source": tfds.features.Text(), "target": tfds.features.Text()})


def _vector_features(tfds):
    return tfds.features.FeaturesDict(
        {
            "x": tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="bytes"),
            "y": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        }
    )


class Source:
    """A prepared dataset: ``split -> records``, read with random access."""

    def __init__(self, builder):
        self.builder = builder
        self._sources: dict[str, Any] = {}

    @property
    def splits(self) -> list[str]:
        return list(self.builder.info.splits.keys())

    def split(self, name: str):
        if name not in self._sources:
            self._sources[name] = self.builder.as_data_source(split=name)
        return self._sources[name]

    def texts(self, split: str) -> str:
        """The whole text of a split of :func:`text_corpus`."""
        source = self.split(split)
        return "".join(source[i]["text"].decode("utf-8") for i in range(len(source)))

    def pairs(self, split: str) -> list[tuple[str, str]]:
        """All (source, target) pairs of a split of a pairs source, in order."""
        source = self.split(split)
        records = source.__getitems__(list(range(len(source)))) if len(source) else []
        return [(r["source"].decode("utf-8"), r["target"].decode("utf-8")) for r in records]

    def vectors(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x [N, n, d], y [N, n])`` of a split of :func:`generated_vectors`."""
        source = self.split(split)
        records = source.__getitems__(list(range(len(source))))
        return np.stack([r["x"] for r in records]), np.stack([r["y"] for r in records])


def _chunks(text: str) -> Iterator[dict]:
    for start in range(0, len(text), CHUNK_CHARS):
        yield {"text": text[start : start + CHUNK_CHARS]}


def text_corpus(files: list[Path], train_fraction: float, cache_dir: Path) -> Source:
    """A text source: the files' text joined by blank lines, the first ``train_fraction`` for training."""
    if not files:
        raise DataError("the text corpus has no files")

    def splits():
        text = "\n\n".join(read_text_file(f) for f in files)
        cut = int(len(text) * train_fraction)
        return {"train": _chunks(text[:cut]), "validation": _chunks(text[cut:])}

    name = fingerprint(*files, train_fraction)
    return Source(_prepare("gpt2_jax_text", _text_features, name, cache_dir, splits))


def corpus_files(corpus: str, data_dir: str, cache_dir: Path) -> list[Path]:
    """The files of ``config.data.corpus``: one file, or the ``.txt`` files of a folder (sorted)."""
    if corpus == "tinyshakespeare/input.txt":
        return [find_or_fetch(corpus, TINYSHAKESPEARE_URL, data_dir, cache_dir)]
    path = paths.resolve(corpus, data_dir)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise DataError(f"folder {path} holds no .txt files; point config.data.corpus at a text file or folder")
        return files
    read_text_file(path)  # the same checks (exists, not empty, UTF-8) before any building
    return [path]


def _pair_lines(source_file: Path, target_file: Path) -> list[tuple[str, str]]:
    src = read_text_file(source_file).splitlines()
    tgt = read_text_file(target_file).splitlines()
    if len(src) != len(tgt):
        raise DataError(
            f"parallel files are misaligned: {source_file} has {len(src)} lines but {target_file} has {len(tgt)}; "
            "every source line needs exactly one target line"
        )
    return list(zip(src, tgt, strict=True))


def _pair_records(pairs: list[tuple[str, str]]) -> Iterator[dict]:
    return ({"source": s, "target": t} for s, t in pairs)


def parallel_corpus(split_files: dict[str, tuple[Path, Path]], cache_dir: Path) -> Source:
    """A pairs source from aligned line files, one (source file, target file) pair per split."""
    for src, tgt in split_files.values():  # fail before building
        _pair_lines(src, tgt)

    def splits():
        return {split: _pair_records(_pair_lines(src, tgt)) for split, (src, tgt) in split_files.items()}

    name = fingerprint(*[p for pair in split_files.values() for p in pair], sorted(split_files))
    return Source(_prepare("gpt2_jax_pairs", _pair_features, name, cache_dir, splits))


def multi30k(data_dir: str, cache_dir: Path) -> Source:
    """Multi30k task 1 (German-English), read as (de, en) pairs; train / validation / test (2016 Flickr)."""
    files = {}
    for split, stem in MULTI30K_SPLITS.items():
        pair = []
        for lang in ("de", "en"):
            name = f"{stem}.{lang}.gz"
            pair.append(find_or_fetch(f"multi30k/{name}", MULTI30K_URL.format(name=name), data_dir, cache_dir))
        files[split] = tuple(pair)
    return parallel_corpus(files, cache_dir)


def generated_pairs(name: str, params: dict, generate: Callable[[], dict[str, list[tuple[str, str]]]], cache_dir: Path):
    """A pairs source of generated pairs (synthetic tasks), keyed by the generator's parameters."""

    def splits():
        return {split: _pair_records(pairs) for split, pairs in generate().items()}

    return Source(_prepare("gpt2_jax_pairs", _pair_features, f"{name}_{fingerprint(params)}", cache_dir, splits))


def generated_vectors(name: str, params: dict, generate: Callable[[], dict[str, tuple]], cache_dir: Path) -> Source:
    """A vectors source of generated real-valued sequences, keyed by the generator's parameters."""

    def records(x: np.ndarray, y: np.ndarray) -> Iterator[dict]:
        return ({"x": x[i], "y": y[i]} for i in range(len(x)))

    def splits():
        return {split: records(x, y) for split, (x, y) in generate().items()}

    return Source(_prepare("gpt2_jax_vectors", _vector_features, f"{name}_{fingerprint(params)}", cache_dir, splits))
