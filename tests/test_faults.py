"""Faults that must never lose data silently: each is refused loudly, or recovered from with a warning."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import sweeps
from gpt2_jax import checkpointing, files, generation, runs, train
from gpt2_jax.errors import CheckpointError, UserError
from gpt2_jax.metrics_writer import MetricsWriter, read_metrics
from tests.helpers import REPO, TEXT, tiny_config, write_corpus
from tests.test_experiments import sweep_cmd, tiny_sweep
from tests.test_reliability import cli_args, wait_for_step


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory`` (the lock file aside) with its size and modification time."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != files.LOCK_NAME
    }


def trained(tmp_path: Path, **overrides) -> tuple[Path, Path, dict]:
    corpus = write_corpus(tmp_path)
    workdir = tmp_path / "run"
    config = tiny_config(corpus=corpus, **{"num_train_steps": 10, "checkpoint_every_steps": 5, **overrides})
    return corpus, workdir, train.train_and_evaluate(config, workdir)


# 1. A corrupt newest checkpoint


def test_a_corrupt_newest_checkpoint_is_set_aside_retrained_saved_again_and_then_used(tmp_path, caplog):
    corpus, workdir, _ = trained(tmp_path)
    for f in (workdir / "checkpoints" / "10" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="gpt2_jax.checkpointing"):
        results = train.train_and_evaluate(
            tiny_config(corpus=corpus, num_train_steps=10, checkpoint_every_steps=5), workdir
        )
    assert "checkpoint step 10" in caplog.text and "unreadable_checkpoints" in caplog.text
    assert [p.name.split("-")[0] for p in (workdir / "unreadable_checkpoints").iterdir()] == ["10"]
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints")
    assert ckpt.steps() == [5, 10], "step 10 was saved again, beside the last good step"
    ckpt.close()
    run = runs.load(workdir)
    assert run.step == 10
    assert train.params_fingerprint(run.params) == results["params_sha256"], "decoding reads the new step 10"


def test_only_unreadable_files_fall_back_to_an_earlier_step(tmp_path, monkeypatch):
    _, workdir, _ = trained(tmp_path)
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints", set_aside_unreadable=True)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("RESOURCE_EXHAUSTED: out of memory while restoring")

    monkeypatch.setattr(ckpt._manager, "restore", out_of_memory)
    with pytest.raises(MemoryError):
        ckpt.restore({}, {})
    assert ckpt.steps() == [5, 10], "nothing was set aside"
    ckpt.close()


# 2. Every check before the first write


def test_a_refused_resume_leaves_the_workdir_as_it_was(tmp_path):
    corpus, workdir, _ = trained(tmp_path)
    (workdir / "config.json").unlink()
    before = snapshot(workdir)
    with pytest.raises(CheckpointError, match="belongs to a different model"):
        train.train_and_evaluate(tiny_config("encoder_decoder", corpus, num_train_steps=10), workdir)
    assert snapshot(workdir) == before
    # The original command still resumes (here: finds the run finished).
    results = train.train_and_evaluate(
        tiny_config(corpus=corpus, num_train_steps=10, checkpoint_every_steps=5), workdir
    )
    assert results["steps"] == 10


def test_an_unreadable_config_json_is_an_error_that_names_it_not_a_different_run(tmp_path):
    corpus, workdir, _ = trained(tmp_path)
    (workdir / "config.json").write_text('{"model": ')
    with pytest.raises(UserError, match=r"config.json \(the run's config.*cannot be read") as error:
        train.train_and_evaluate(tiny_config(corpus=corpus, num_train_steps=10), workdir)
    assert "--overwrite" not in str(error.value)


# 3. Changed data on resume


def test_a_corpus_edited_between_runs_is_refused_on_resume(tmp_path):
    corpus, workdir, _ = trained(tmp_path)
    corpus.write_text(corpus.read_text().replace("a", "z"))  # the alphabet changes: ids would mean other characters
    before = snapshot(workdir)
    config = tiny_config(corpus=corpus, num_train_steps=20, checkpoint_every_steps=5)
    with pytest.raises(CheckpointError, match="tokenizer built from the data differs"):
        train.train_and_evaluate(config, workdir)
    with pytest.raises(CheckpointError, match="tokenizer"):
        train.train_and_evaluate(config, workdir, accept_data_change=True)
    assert snapshot(workdir) == before


def test_changed_data_with_the_same_tokenizer_resumes_only_when_accepted(tmp_path):
    corpus, workdir, _ = trained(tmp_path)
    corpus.write_text(TEXT * 41)  # more of the same text: the same alphabet
    config = tiny_config(corpus=corpus, num_train_steps=15, checkpoint_every_steps=5)
    with pytest.raises(CheckpointError, match="--accept_data_change"):
        train.train_and_evaluate(config, workdir)
    assert train.train_and_evaluate(config, workdir, accept_data_change=True)["steps"] == 15


# 4. One writer per workdir


def test_a_second_process_on_a_workdir_fails_at_once_naming_the_first(tmp_path):
    corpus, workdir = write_corpus(tmp_path), tmp_path / "run"
    args = cli_args(corpus, workdir, num_train_steps=100000, checkpoint_every_steps=100000, eval_every_steps=100000)
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(workdir, 2, first)
        lines_before = len((workdir / "metrics.jsonl").read_text().splitlines())
        second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert one_line_error(second) == (
            f"error: workdir {workdir} is in use by process {first.pid}; wait for it to finish or stop it, "
            "or use another directory"
        )
        steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(steps) and len(steps) >= lines_before, "only the first process wrote metrics"
    finally:
        first.kill()
        first.wait()


# 5. Sweep directories


def test_a_sweep_of_another_config_is_refused_before_anything_is_written(tmp_path):
    path, workdir = tiny_sweep(tmp_path), tmp_path / "sweep"
    workdir.mkdir()
    files.write_json(workdir / "sweep.json", sweeps.definition(sweeps.load(f"{path}:ok"), f"{path}:ok"))
    before = snapshot(workdir)
    result = subprocess.run(sweep_cmd(path, workdir, "broken"), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: {workdir} holds another sweep (cells only in the directory")
    assert snapshot(workdir) == before and not (workdir / "runs").exists()


def test_sigterm_stops_the_sweeps_worker_and_a_second_worker_never_shares_a_run(tmp_path):
    path, workdir = tiny_sweep(tmp_path), tmp_path / "sweep"
    text = path.read_text().replace("= 3\n", "= 100000\n")  # runs that last until stopped
    path.write_text(text)
    sweep = subprocess.Popen(
        sweep_cmd(path, workdir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run_dir = workdir / "runs" / "a__s0"
    wait_for_step(run_dir / "train", 1, sweep, timeout=180)
    worker_pid = json.loads((run_dir / "status.json").read_text())["pid"]
    second = subprocess.run(
        [sys.executable, "-m", "experiments.worker", f"--run_dir={run_dir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2 and f"in use by process {worker_pid}" in second.stderr
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=120) == 1
    deadline = time.time() + 30
    while time.time() < deadline and Path(f"/proc/{worker_pid}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{worker_pid}").exists(), "the worker outlived its sweep"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"


# 6. Decoding arguments


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> runs.Run:
    tmp = tmp_path_factory.mktemp("decode")
    config = tiny_config(corpus=write_corpus(tmp), num_train_steps=2, **{"data.seq_len": 64})
    train.train_and_evaluate(config, tmp / "run")
    return runs.load(tmp / "run")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"temperature": -1.0}, "temperature=-1.0: must be >= 0"),
        ({"top_p": 0.0}, "top_p=0.0: must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p=1.5: must be in (0, 1]"),
        ({"top_k": -3}, "top_k=-3: must be >= 0"),
        ({"beam_size": -1}, "beam_size=-1: must be between 1 and the vocabulary's"),
        ({"beam_size": 100}, "beam_size=100: must be between 1 and the vocabulary's"),
        ({"max_new_tokens": 0}, "max_new_tokens=0: generate at least 1 token"),
    ],
)
def test_bad_decoding_arguments_are_refused(small_run, overrides, message):
    args = {"max_new_tokens": 5, "temperature": 0.5, "top_k": 0, "top_p": 1.0, "beam_size": 0, **overrides}
    assert small_run.tokenizer.vocab_size < 100
    with pytest.raises(UserError) as error:
        generation.complete(small_run, ["First"], **args)
    assert message in str(error.value)


def test_padding_never_takes_room_from_new_tokens_and_a_full_window_slides_on(small_run):
    max_len = small_run.model.cfg.max_len
    prompt = (TEXT * 2)[: max_len - 14]  # 50 characters of a 64-position model: 14 new tokens fit in one window
    first_window = generation.complete(small_run, [prompt], max_new_tokens=14, temperature=0.0)[0]
    sliding = generation.complete(small_run, [prompt], max_new_tokens=100, temperature=0.0)[0]
    assert sliding.startswith(first_window)
    with pytest.raises(UserError, match="a prompt is empty"):
        generation.complete(small_run, [""], max_new_tokens=5)


# 7. A finished run, re-run


def test_rerunning_a_finished_run_keeps_its_throughput(tmp_path):
    corpus, workdir, first = trained(tmp_path)
    again = train.train_and_evaluate(tiny_config(corpus=corpus, num_train_steps=10, checkpoint_every_steps=5), workdir)
    assert first["train_tokens_per_s"] > 0
    assert again["train_tokens_per_s"] == pytest.approx(first["train_tokens_per_s"], rel=1e-6)
    assert again["params_sha256"] == first["params_sha256"]


# 8. One-line errors


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error line that ends a failed command (progress logged before it aside), with no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr[-2000:]
    return errors[0]


def run_module(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=180, env=env or os.environ
    )


def test_a_config_file_with_a_syntax_error_is_one_line(tmp_path):
    bad = tmp_path / "bad_config.py"
    bad.write_text("def get_config(:\n    pass\n")
    line = one_line_error(run_module("gpt2_jax.main", f"--config={bad}", f"--workdir={tmp_path / 'w'}"))
    assert "bad_config.py" in line and "SyntaxError" in line


def test_a_workdir_or_cache_dir_that_is_a_file_is_one_line(tmp_path):
    corpus, blocker = write_corpus(tmp_path), tmp_path / "a_file"
    blocker.write_text("")
    args = cli_args(corpus, blocker, num_train_steps=1)[2:]
    assert "is a file, not a directory" in one_line_error(run_module(*args))
    env = {**os.environ, "GPT2_JAX_CACHE_DIR": str(blocker / "cache")}
    args = cli_args(corpus, tmp_path / "w", num_train_steps=1)[2:]
    assert "cache directory" in one_line_error(run_module(*args, env=env))


def test_sample_on_a_corrupt_or_untrained_run_is_one_line_and_writes_nothing(tmp_path):
    _, workdir, _ = trained(tmp_path)
    (workdir / "config.json").write_text("{")
    assert "config.json (the run's config) cannot be read" in one_line_error(
        run_module("gpt2_jax.sample", f"--workdir={workdir}")
    )
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (fresh / name).write_text("{}")
    assert "has no checkpoint yet" in one_line_error(run_module("gpt2_jax.sample", f"--workdir={fresh}"))
    assert not (fresh / "checkpoints").exists()


def test_report_of_an_empty_directory_is_one_line_and_a_cut_metrics_line_is_skipped(tmp_path, caplog):
    assert "holds no sweep" in one_line_error(run_module("experiments.report", str(tmp_path)))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 2.0}\n{"step": 2, "spl')
    with caplog.at_level(logging.WARNING, logger="gpt2_jax.metrics_writer"):
        assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    assert "skipping line 2" in caplog.text


def test_an_hf_folder_without_a_safetensors_file_is_a_clear_error(tmp_path):
    from gpt2_jax import hf_gpt2
    from gpt2_jax.model import TransformerConfig

    cfg = TransformerConfig(vocab_size=10, num_layers=1, num_heads=2, emb_dim=8, mlp_dim=32, max_len=16)
    (tmp_path / "config.json").write_text(json.dumps(hf_gpt2.config_to_hf(cfg)))
    (tmp_path / "model.safetensors").write_text("not safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a safetensors file"):
        hf_gpt2.load(str(tmp_path))


def test_evaluate_fails_before_decoding_when_it_cannot_write(small_run, monkeypatch):
    from gpt2_jax import evaluate

    (Path(small_run.workdir) / "eval_validation").write_text("a file where the output folder goes")
    monkeypatch.setattr(evaluate, "Experiment", lambda *a, **k: pytest.fail("evaluated before checking the output"))
    with pytest.raises(UserError, match="is a file, not a directory"):
        evaluate.language_model_scores(small_run, "validation")


# 9. Nothing written outside the workdir, the cache and removed temporary files


def test_preparing_data_and_plotting_leave_nothing_in_home_or_the_temp_dir(tmp_path):
    home, temp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR"}
    env.update(HOME=str(home), TMPDIR=str(temp), GPT2_JAX_CACHE_DIR=str(tmp_path / "cache"))
    script = (
        "from experiments import report; from gpt2_jax import data; from tests.helpers import tiny_config;"
        f"data.build(tiny_config(corpus={str(write_corpus(tmp_path))!r}));"
        "plt = report.pyplot(); plt.figure(); plt.savefig(__import__('os').devnull, format='png')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(home.iterdir()) == [] and list(temp.iterdir()) == []


# 10. Atomic writes


def test_a_crash_while_writing_leaves_the_old_file_whole_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    files.write_json(path, {"loss": 1.0})

    def crash(src, dst):
        raise OSError("killed mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed mid-write"):
        files.write_json(path, {"loss": 2.0})
    assert json.loads(path.read_text()) == {"loss": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_resumed_metrics_keep_their_history_and_say_which_lines_they_drop(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "split": "train"}) + "\n" for s in (5, 10, 15)) + '{"step": 2')
    with caplog.at_level(logging.WARNING, logger="gpt2_jax.metrics_writer"):
        writer = MetricsWriter(tmp_path, resume_step=10)
    writer.write(11, "train", {"loss": 1.0})
    writer.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10, 11]
    assert "dropping line 4" in caplog.text


def test_a_run_saved_before_newer_config_fields_loads_with_their_defaults(tmp_path):
    _, workdir, _ = trained(tmp_path)
    saved = json.loads((workdir / "config.json").read_text())
    del saved["data"]["eval_cuts"], saved["data"]["target_positions"], saved["optimizer"]["schedule"]
    (workdir / "config.json").write_text(json.dumps(saved))
    run = runs.load(workdir)
    assert (run.config.data.eval_cuts, run.config.data.target_positions, run.config.optimizer.schedule) == (
        (),
        "continue",
        "cosine",
    )
    assert run.step == 10
