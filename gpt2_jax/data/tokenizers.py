"""Tokenizers behind one interface, with the special tokens defined in one place.

Every tokenizer maps text to ``int32`` ids and back and exposes the ids of the
special tokens the objectives need (pad, bos, eos, sep, mask).  Character and
byte tokenizers put the specials first (ids 0..4), so padding is always id 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from gpt2_jax.errors import DataError

# The special tokens, in id order, for tokenizers that own their vocabulary.
SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>", "<mask>")


class Tokenizer(Protocol):
    """What objectives and decoding need from a tokenizer."""

    name: str
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    sep_id: int
    mask_id: int
    num_specials: int  # ids [0, num_specials) are special; ordinary tokens follow.

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_json(self) -> dict[str, Any]: ...


class _SpecialsFirst:
    """Shared part of tokenizers whose ids 0..len(SPECIALS)-1 are the specials."""

    pad_id, bos_id, eos_id, sep_id, mask_id = range(len(SPECIALS))
    num_specials = len(SPECIALS)


class CharTokenizer(_SpecialsFirst):
    """One id per character of a fixed alphabet (nanoGPT's shakespeare_char, plus specials).

    The alphabet is the sorted set of characters of the corpus it is built
    from; text outside it cannot be encoded.
    """

    name = "char"

    def __init__(self, alphabet: str):
        self.alphabet = "".join(sorted(set(alphabet)))
        self._index = {c: i + self.num_specials for i, c in enumerate(self.alphabet)}
        self.vocab_size = self.num_specials + len(self.alphabet)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(text)

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.fromiter((self._index[c] for c in text), dtype=np.int32, count=len(text))
        except KeyError as e:
            raise DataError(
                f"character {e.args[0]!r} is not in this char tokenizer's alphabet of {len(self.alphabet)} characters"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        n = self.num_specials
        return "".join(self.alphabet[i - n] if i >= n else "" for i in (int(t) for t in ids))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "alphabet": self.alphabet}


class ByteTokenizer(_SpecialsFirst):
    """UTF-8 bytes shifted past the specials: any text, vocabulary 261."""

    name = "byte"
    vocab_size = len(SPECIALS) + 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + self.num_specials

    def decode(self, ids: Sequence[int]) -> str:
        n = self.num_specials
        data = bytes(int(i) - n for i in ids if n <= int(i) < n + 256)
        return data.decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name}


def build(name: str, corpus_text: str) -> Tokenizer:
    """Build the tokenizer ``name`` for a corpus (the char alphabet comes from the text)."""
    if name == "char":
        return CharTokenizer.from_text(corpus_text)
    if name == "byte":
        return ByteTokenizer()
    raise DataError(f"unknown tokenizer {name!r}; set config.data.tokenizer to 'char' or 'byte'")


def from_json(spec: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer saved with ``to_json`` (e.g. from a run's workdir)."""
    if spec["name"] == "char":
        return CharTokenizer(spec["alphabet"])
    if spec["name"] == "byte":
        return ByteTokenizer()
    raise DataError(f"cannot rebuild tokenizer {spec['name']!r}")


def save(tokenizer: Tokenizer, path: str) -> None:
    with open(path, "w") as f:
        json.dump(tokenizer.to_json(), f)
