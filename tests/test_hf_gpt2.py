"""GPT-2 compatibility against the reference implementation (Hugging Face transformers, PyTorch on the CPU)."""

import json

import jax
import numpy as np
import pytest

from gpt2_jax import decoding, hf_gpt2
from gpt2_jax.errors import CheckpointError
from gpt2_jax.experiment import Experiment
from gpt2_jax.model import Transformer
from tests.helpers import tiny_config, write_corpus

torch = pytest.importorskip("torch", reason="the hf test extra (torch, transformers) is not installed")
transformers = pytest.importorskip("transformers")


def reference_model(tmp_path, layers=2, width=32, heads=4, vocab=100, positions=64):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=width, n_layer=layers, n_head=heads)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # transformers initialises biases to zero: nonzero ones test how ours are applied
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    return model, folder


def logits_of(model_or_params, ids, cfg=None):
    if cfg is None:
        with torch.no_grad():
            return model_or_params(torch.tensor(ids)).logits.numpy()
    B, L = ids.shape
    batch = {"input_tokens": ids.astype(np.int32), "positions": np.broadcast_to(np.arange(L), (B, L)).astype(np.int32)}
    return np.asarray(jax.jit(Transformer(cfg).apply)({"params": model_or_params}, batch))


def test_import_matches_transformers_logits_and_greedy(tmp_path):
    ref, folder = reference_model(tmp_path)
    cfg, params = hf_gpt2.load(str(folder))
    assert (cfg.num_layers, cfg.emb_dim, cfg.num_heads, cfg.vocab_size, cfg.max_len) == (2, 32, 4, 100, 64)
    ids = np.random.default_rng(0).integers(0, 100, (2, 20))
    assert np.abs(logits_of(params, ids, cfg) - logits_of(ref, ids)).max() <= 1e-4
    prompt = ids[:, :5]
    with torch.no_grad():
        want = ref.generate(
            torch.tensor(prompt), max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None
        ).numpy()[:, 5:]
    tokens, _ = decoding.generate(
        params,
        decoding.pad_prompts(list(prompt), 0),
        jax.random.PRNGKey(0),
        model=Transformer(cfg),
        max_new_tokens=12,
        eos_id=-1,
    )
    np.testing.assert_array_equal(np.asarray(tokens), want)


def test_export_loads_back_into_transformers(tmp_path):
    ref, folder = reference_model(tmp_path)
    cfg, params = hf_gpt2.load(str(folder), pad_vocab_to=64)  # the table padded on import, stripped on export
    assert params["wte"]["embedding"].shape == (128, 32) and not params["wte"]["embedding"][100:].any()
    ids = np.random.default_rng(1).integers(0, 100, (2, 24))
    assert np.abs(logits_of(params, ids, cfg)[..., :100] - logits_of(ref, ids)).max() <= 1e-4
    out = hf_gpt2.save(params, cfg, tmp_path / "exported")
    again = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert np.abs(logits_of(again, ids) - logits_of(ref, ids)).max() <= 1e-4
    assert json.loads((out / "config.json").read_text())["n_layer"] == 2


def test_all_four_gpt2_sizes_are_described():
    assert {name: hf_gpt2.SIZES[name] for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")} == {
        "gpt2": (12, 768, 12),
        "gpt2-medium": (24, 1024, 16),
        "gpt2-large": (36, 1280, 20),
        "gpt2-xl": (48, 1600, 25),
    }
    from configs import gpt2_124m

    config = gpt2_124m.get_config()
    assert (config.model.num_layers, config.model.emb_dim, config.model.num_heads, config.data.seq_len) == (
        12,
        768,
        12,
        1024,
    )


def test_fine_tuning_starts_from_imported_weights(tmp_path):
    _, folder = reference_model(tmp_path, vocab=50257, positions=64)
    corpus = write_corpus(tmp_path)
    config = tiny_config(corpus=corpus, num_train_steps=1, eval_every_steps=1, checkpoint_every_steps=1)
    config.data.tokenizer = "gpt2"
    config.model.num_layers, config.model.emb_dim, config.model.num_heads = 2, 32, 4
    config.model.max_len = 64
    config.model.init_from = str(folder)
    config.model.pad_vocab_to = 64  # as configs/gpt2_124m.py: 50257 -> 50304 rows
    exp = Experiment(config)
    state = exp.init_state()
    _, imported = hf_gpt2.load(str(folder))
    np.testing.assert_array_equal(
        np.asarray(state.params["h_1"]["mlp"]["c_fc"]["kernel"]), imported["h_1"]["mlp"]["c_fc"]["kernel"]
    )
    table = np.asarray(state.params["wte"]["embedding"])
    assert table.shape == (50304, 32) and not table[50257:].any()
    np.testing.assert_array_equal(table[:50257], imported["wte"]["embedding"])
    config.model.num_layers = 3
    with pytest.raises(CheckpointError, match="does not fit this model"):
        Experiment(config).init_state()


@pytest.mark.slow
def test_full_124m_shape_matches_transformers(tmp_path):
    ref, folder = reference_model(tmp_path, layers=12, width=768, heads=12, vocab=50257, positions=1024)
    cfg, params = hf_gpt2.load(str(folder))
    ids = np.random.default_rng(0).integers(0, 50257, (1, 64))
    assert np.abs(logits_of(params, ids, cfg) - logits_of(ref, ids)).max() <= 1e-4
    exported = transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2.save(params, cfg, tmp_path / "out")).eval()
    assert np.abs(logits_of(exported, ids) - logits_of(ref, ids)).max() <= 1e-4
