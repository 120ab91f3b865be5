"""Text-level decoding of trained runs: the evaluation entry point, the sampling CLI, and the metrics."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from gpt2_jax import batch as batch_lib
from gpt2_jax import checkpointing, experiment, runs, scores, train
from gpt2_jax.data import paired_splits, paths, tokenizers
from gpt2_jax.errors import CheckpointError, ConfigError, UserError
from gpt2_jax.evaluate import decode_split, language_model_scores
from gpt2_jax.experiment import Experiment
from gpt2_jax.generation import complete
from gpt2_jax.model import Transformer
from tests.helpers import REPO, TEXT, small_copy_config, tiny_config, write_corpus


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("copy") / "run"
    results = train.train_and_evaluate(small_copy_config("encoder_decoder"), workdir)
    return workdir, results


def test_copy_task_reaches_exact_match(copy_run):
    _, results = copy_run
    assert results["final_eval_exact_match"] > 0.95


def test_greedy_decoding_exact_match_equals_teacher_forced_exact_match(copy_run):
    workdir, results = copy_run
    scored = decode_split(runs.load(workdir), "validation", max_new_tokens=16, batch_size=64)
    assert scored["examples"] == results["eval"]["validation"]["examples"] == 200
    assert scored["exact_match"] == pytest.approx(results["final_eval_exact_match"])
    lines = (workdir / "eval_validation" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 200 and set(json.loads(lines[0])) == {"source", "reference", "hypothesis"}
    saved = json.loads((workdir / "eval_validation" / "scores.json").read_text())
    # One-word outputs have no 4-grams, so BLEU says nothing here; chrF does.
    assert saved["bleu_signature"].startswith("nrefs:1|") and saved["chrf"] > 90


def test_beam_decoding_writes_beside_the_greedy_results(copy_run):
    workdir, _ = copy_run
    greedy = decode_split(runs.load(workdir), "validation", max_new_tokens=16, batch_size=64, limit=20)
    beam = decode_split(runs.load(workdir), "validation", beam_size=2, max_new_tokens=16, batch_size=64, limit=20)
    assert greedy["decoding"] == "greedy" and beam["decoding"] == "beam 2, alpha 0.6"
    assert json.loads((workdir / "eval_validation" / "scores.json").read_text()) == greedy
    assert json.loads((workdir / "eval_validation_beam2" / "scores.json").read_text()) == beam


@pytest.mark.parametrize("mesh", ["", "2,2,2"])
def test_sample_cli_prints_a_continuation(copy_run, mesh):
    workdir, _ = copy_run
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt2_jax.sample",
            f"--workdir={workdir}",
            "--prompt=Cabcd",
            "--temperature=0",
            f"--mesh={mesh}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "abcd"


def test_a_run_loads_and_decodes_on_another_mesh(copy_run):
    """Trained on one device, restored sharded over (data=2, fsdp=2, tensor=2): the same outputs, greedy and beam."""
    workdir, _ = copy_run
    one = runs.load(workdir)
    eight = runs.load(workdir, runs.parse_mesh("2,2,2"))
    assert one.mesh.size == 1 and dict(eight.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    kernel = eight.params["h_0"]["mlp"]["c_fc"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1] // 2), "really sharded"
    pairs = paired_splits(one.config, paths.cache_dir(one.config.data.cache_dir))["validation"]
    sources = [source for source, _ in pairs[:12]]  # 12 rows: the batch axes (4) divide them
    for beam_size in (0, 3):
        want = complete(one, sources, 16, beam_size=beam_size)
        assert complete(eight, sources, 16, beam_size=beam_size) == want
        assert complete(eight, sources[:3], 16, beam_size=beam_size) == want[:3], "3 rows: replicated"


def test_a_run_whose_mesh_does_not_fit_names_the_flag_to_pass():
    config = small_copy_config()
    config.mesh.tensor = 16
    with pytest.raises(ConfigError, match="--mesh=data,fsdp,tensor"):
        runs.decode_mesh(config)
    assert runs.decode_mesh(config, {"data": -1, "fsdp": 1, "tensor": 2}).shape["data"] == 4
    assert runs.parse_mesh("") is None and runs.parse_mesh("-1,1,2") == {"data": -1, "fsdp": 1, "tensor": 2}
    with pytest.raises(ConfigError, match="expected three sizes"):
        runs.parse_mesh("2,2")


def test_language_model_scores_are_the_same_on_another_mesh(tmp_path):
    """``evaluate`` on a language-model run: teacher-forced loss, perplexity and bits, on one device and on 8."""
    workdir = tmp_path / "lm"
    results = train.train_and_evaluate(tiny_config("decoder_only", write_corpus(tmp_path)), workdir)
    one = language_model_scores(runs.load(workdir), "validation")
    eight = language_model_scores(runs.load(workdir, runs.parse_mesh("2,2,2")), "validation")
    assert one["loss"] == pytest.approx(results["final_eval_loss"], abs=1e-6)
    assert eight["loss"] == pytest.approx(one["loss"], abs=1e-5)
    assert one["perplexity"] == pytest.approx(math.exp(one["loss"]))
    assert one["bits_per_char"] == pytest.approx(one["loss"] / math.log(2))
    assert json.loads((workdir / "eval_validation" / "scores.json").read_text())["loss"] == eight["loss"]


def test_a_run_loads_its_parameters_without_the_optimizer_state(tmp_path):
    """Decoding reads only the parameters: a run whose optimizer config no longer matches its saved moments loads."""

    def restore_train_state(config):
        exp = Experiment(config)
        reader = checkpointing.Checkpointer(workdir / "checkpoints")
        try:
            return reader.restore(
                checkpointing.abstract_with_shardings(exp.abstract_state, exp.state_shardings), exp.signature
            )[0]
        finally:
            reader.close()

    workdir = tmp_path / "lm"
    config = tiny_config("decoder_only", write_corpus(tmp_path))
    train.train_and_evaluate(config, workdir)
    saved = restore_train_state(config)
    resolved = json.loads((workdir / "config.json").read_text())
    resolved["optimizer"]["grad_clip_norm"] = 0.0  # one optax transform fewer: another optimizer-state tree
    (workdir / "config.json").write_text(json.dumps(resolved))
    with pytest.raises(CheckpointError, match="could be read"):
        restore_train_state(ml_collections.ConfigDict(resolved))
    run = runs.load(workdir)
    assert run.step == 20
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), run.params, saved.params))


def test_bleu_and_chrf_of_a_reference_against_itself_are_100():
    refs = ["A man rides a bike.", "Two dogs play in the snow.", "Ein kleines Haus."]
    assert scores.bleu(refs, refs)["bleu"] == pytest.approx(100.0)
    assert scores.chrf(refs, refs)["chrf"] == pytest.approx(100.0)
    assert scores.exact_match(refs, refs) == 1.0
    assert scores.bleu(["A cat sleeps."], ["Two dogs play in the snow."])["bleu"] < 10


def test_loading_a_directory_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="holds no run"):
        runs.load(tmp_path)


def _random_run(arch: str, tmp_path) -> runs.Run:
    """An untrained run whose logits have clear gaps (a scaled embedding) and whose specials are never chosen."""
    config = tiny_config(arch, **{"data.seq_len": 32})
    tokenizer = tokenizers.CharTokenizer(TEXT)
    cfg = experiment.model_config(config, tokenizer.vocab_size, 32)
    model = Transformer(cfg)
    params = model.init(jax.random.PRNGKey(1), batch_lib.dummy(arch, 1, 8, 8))["params"]
    table = params["wte"]["embedding"] * 40.0
    params["wte"]["embedding"] = table.at[: tokenizer.num_specials].set(0.0)
    return runs.Run(tmp_path, config, model, params, tokenizer, 0, runs.decode_mesh(config))


def _greedy_full_forward(run: runs.Run, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding by the full forward pass, one window at a time, on the schedule ``complete`` documents:
    the first window holds the prompt, each later one the last half of the window's positions."""
    model, max_len = run.model, run.model.cfg.max_len
    ed = run.arch == "encoder_decoder"
    cap, keep, context, out = (max_len if ed else max_len - 1), max_len // 2, list(prompt), []

    def padded(ids: list[int]) -> jnp.ndarray:
        return jnp.asarray([ids + [0] * (max_len - len(ids))], jnp.int32)

    positions = jnp.arange(max_len, dtype=jnp.int32)[None]
    forward = jax.jit(lambda batch: model.apply({"params": run.params}, batch))
    while len(out) < new_tokens:
        window = context[-cap:]
        room = max_len if ed else max_len - len(window)
        new: list[int] = []
        for _ in range(min(new_tokens - len(out), room)):
            if ed:
                valid = (jnp.arange(max_len) < len(window)).astype(jnp.int32)[None]
                batch = {
                    "encoder_input_tokens": padded(window),
                    "encoder_positions": positions,
                    "encoder_segment_ids": valid,
                    "input_tokens": padded([run.tokenizer.bos_id, *new]),
                    "positions": positions,
                }
                at = len(new)
            else:
                batch = {"input_tokens": padded(window + new), "positions": positions}
                if run.arch == "prefix_lm":
                    batch["bidirectional"] = (jnp.arange(max_len) < len(window)).astype(jnp.int32)[None]
                at = len(window) + len(new) - 1
            new.append(int(jnp.argmax(forward(batch)[0, at])))
        context, out, cap = context + new, out + new, keep
    return out


@pytest.mark.parametrize("arch", ["decoder_only", "prefix_lm", "encoder_decoder"])
def test_generation_slides_past_the_window_as_the_full_forward_pass_does(arch, tmp_path):
    """70 new tokens from a 32-position model: the window is prefilled again (a new bidirectional prefix for the
    prefix-LM, a new source for the encoder-decoder) and the output equals full-forward greedy decoding."""
    run = _random_run(arch, tmp_path)
    prompt = "First Citizen:\n"
    want = run.tokenizer.decode(_greedy_full_forward(run, list(run.tokenizer.encode(prompt)), 70))
    got = complete(run, [prompt, "All:"], 70, temperature=0.0)
    assert len(want) == 70 and got[0] == want
    assert len(got[1]) == 70, "a shorter prompt in the same batch"


def test_beam_search_refuses_more_than_one_window_and_long_prompts_are_cropped(tmp_path, caplog):
    run = _random_run("decoder_only", tmp_path)
    with pytest.raises(UserError, match="beam search decodes within one window: at most 17 new tokens"):
        complete(run, ["First Citizen:\n"], 18, beam_size=2)
    assert len(complete(run, ["First Citizen:\n"], 17, beam_size=2)[0]) <= 17
    long_prompt = TEXT[:50]
    want = complete(run, [long_prompt[-31:]], 5)
    assert complete(run, [long_prompt], 5) == want
    assert "a prompt is 50 tokens long; the model reads its last 31" in caplog.text
