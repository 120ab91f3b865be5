"""Tokenizers: one interface, specials in one place, GPT-2's real ids, deterministic trained vocabularies."""

import pytest

from gpt2_jax.data import tokenizers
from gpt2_jax.errors import DataError
from tests.helpers import TEXT, tiny_config


def test_char_round_trip_specials_first_and_unknown_char():
    tok = tokenizers.CharTokenizer("hello world")
    ids = tok.encode("hello")
    assert ids.min() >= tok.ordinary_range[0] == len(tokenizers.SPECIALS)
    assert tok.decode(ids) == "hello"
    assert tok.vocab_size == len(tokenizers.SPECIALS) + len(set("hello world"))
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == "hello", "specials never decode to text"
    with pytest.raises(DataError, match="not in this char tokenizer"):
        tok.encode("z")


def test_byte_tokenizer_any_text_and_sentinels():
    tok = tokenizers.ByteTokenizer(num_sentinels=3)
    text = "Grüße, 世界"
    assert tok.decode(tok.encode(text)) == text
    assert tok.sentinel_ids == (5, 6, 7) and tok.vocab_size == 8 + 256
    assert len({tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id, tok.mask_id, *tok.sentinel_ids}) == 8


def test_gpt2_tokenizer_gives_gpt2_ids_offline():
    tok = tokenizers.GPT2Tokenizer()
    assert tok.encode("Hello world").tolist() == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    text = "To be, or not to be: that is the question."
    assert tok.decode(tok.encode(text)) == text
    extended = tokenizers.GPT2Tokenizer(num_sentinels=4)
    assert extended.mask_id == 50257 and extended.sentinel_ids == (50258, 50259, 50260, 50261)
    assert extended.vocab_size == 50262
    assert tokenizers.from_json(extended.to_json()).vocab_size == 50262


def test_sentencepiece_is_trained_once_deterministically_and_travels_with_the_run(tmp_path):
    config = tiny_config(**{"data.tokenizer": "sentencepiece", "data.vocab_size": 400})
    text = TEXT * 20
    first = tokenizers.build(config.data, text, tmp_path)
    models = list((tmp_path / "tokenizers").glob("*.model"))
    assert len(models) == 1
    mtime = models[0].stat().st_mtime_ns
    again = tokenizers.build(config.data, text, tmp_path)
    assert models[0].stat().st_mtime_ns == mtime, "the cached model is reused"
    assert first.model_proto == again.model_proto
    elsewhere = tokenizers.build(config.data, text, tmp_path / "other")
    pieces = [first._sp.id_to_piece(i) for i in range(first._sp.get_piece_size())]
    assert pieces == [elsewhere._sp.id_to_piece(i) for i in range(first._sp.get_piece_size())], "deterministic"
    ids = first.encode("Speak, speak.")
    assert ids.min() >= first.ordinary_range[0] and first.decode(ids) == "Speak, speak."
    assert first.vocab_size == 400 + len(tokenizers.SPECIALS)
    saved = tmp_path / "tok.json"
    tokenizers.save(first, saved)
    assert tokenizers.load(saved).encode("Speak").tolist() == first.encode("Speak").tolist()


def test_unknown_tokenizer_is_refused():
    config = tiny_config(**{"data.tokenizer": "gpt2"})
    config.data.tokenizer = "wordpiece"
    with pytest.raises(DataError, match="unknown tokenizer 'wordpiece'"):
        tokenizers.build(config.data, "text", None)


def test_sentencepiece_vocabulary_too_small_is_a_clear_error(tmp_path):
    config = tiny_config(**{"data.tokenizer": "sentencepiece", "data.vocab_size": 60})
    with pytest.raises(DataError, match=r"Vocabulary size is smaller than required_chars.*config.data.vocab_size"):
        tokenizers.build(config.data, TEXT * 20, tmp_path)
