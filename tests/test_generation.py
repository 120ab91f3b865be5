"""Text-level decoding of trained runs: the evaluation entry point, the sampling CLI, and the metrics."""

import json
import subprocess
import sys

import pytest

from gpt2_jax import runs, scores, train
from gpt2_jax.evaluate import decode_split
from tests.helpers import REPO, small_copy_config


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


def test_sample_cli_prints_a_continuation(copy_run):
    workdir, _ = copy_run
    result = subprocess.run(
        [sys.executable, "-m", "gpt2_jax.sample", f"--workdir={workdir}", "--prompt=Cabcd", "--temperature=0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "abcd"


def test_bleu_and_chrf_of_a_reference_against_itself_are_100():
    refs = ["A man rides a bike.", "Two dogs play in the snow.", "Ein kleines Haus."]
    assert scores.bleu(refs, refs)["bleu"] == pytest.approx(100.0)
    assert scores.chrf(refs, refs)["chrf"] == pytest.approx(100.0)
    assert scores.exact_match(refs, refs) == 1.0
    assert scores.bleu(["A cat sleeps."], ["Two dogs play in the snow."])["bleu"] < 10


def test_loading_a_directory_without_a_run_is_a_clear_error(tmp_path):
    from gpt2_jax.errors import CheckpointError

    with pytest.raises(CheckpointError, match="holds no run"):
        runs.load(tmp_path)
