"""Preemption, bit-exact resume, guards against bad steps and bad checkpoints, and errors on bad input."""

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2_jax import checkpointing, train
from gpt2_jax import workdir as workdir_lib
from gpt2_jax.errors import CheckpointError, UserError
from gpt2_jax.experiment import Experiment
from tests.helpers import REPO, TEXT, tiny_config, write_corpus


def cli_args(corpus: Path, workdir: Path, **overrides) -> list[str]:
    fields = {
        "data.corpus": corpus,
        "model.num_layers": 1,
        "model.num_heads": 2,
        "model.emb_dim": 32,
        "model.dropout_rate": 0.1,  # dropout makes the RNG part of what must be restored
        "data.seq_len": 16,
        "batch_size": 8,
        "mesh.data": 1,
        "log_every_steps": 1,
        "optimizer.warmup_steps": 2,
        **overrides,
    }
    return [
        sys.executable,
        "-m",
        "gpt2_jax.main",
        "--config=configs/default.py",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in fields.items()),
    ]


def wait_for_step(workdir: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> int:
    """Block until metrics.jsonl logs a training step >= ``step``; return the last logged step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = workdir / "metrics.jsonl"
        if path.exists():
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if '"train"' in line]
            if steps and steps[-1] >= step:
                return steps[-1]
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {process.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("run did not reach the step in time")


def run_to_end(args: list[str]) -> dict:
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(Path(args[4].split("=", 1)[1], "results.json").read_text())


def sigkill_resume_matches(tmp_path: Path, kill_after: int) -> None:
    corpus = write_corpus(tmp_path)
    steps = {"num_train_steps": 24, "checkpoint_every_steps": 4, "eval_every_steps": 12}
    straight = run_to_end(cli_args(corpus, tmp_path / "straight", **steps))
    killed_dir = tmp_path / "killed"
    args = cli_args(corpus, killed_dir, **steps)
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(killed_dir, kill_after, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = run_to_end(args)
    assert resumed["params_sha256"] == straight["params_sha256"], "parameters differ after resume"
    assert resumed["final_eval_loss"] == straight["final_eval_loss"]
    assert resumed["tokens_seen"] == straight["tokens_seen"]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    sigkill_resume_matches(tmp_path, kill_after=int(np.random.default_rng().integers(5, 18)))


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_sigkill_at_random_steps_resumes_bit_identical(tmp_path, trial):
    sigkill_resume_matches(tmp_path, kill_after=int(np.random.default_rng(trial).integers(1, 22)))


def test_sigterm_saves_a_checkpoint_at_the_current_step_and_exits_cleanly(tmp_path):
    corpus = write_corpus(tmp_path)
    workdir = tmp_path / "run"
    args = cli_args(corpus, workdir, num_train_steps=100000, checkpoint_every_steps=0, eval_every_steps=0)
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(workdir, 7, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    stopped = int(out.split("stopped after step ")[1].split(";")[0])
    assert stopped >= 7
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [stopped], "the checkpoint is taken at the step the signal arrived"
    assert not (workdir / "results.json").exists()
    again = run_to_end(
        cli_args(corpus, workdir, num_train_steps=stopped + 2, checkpoint_every_steps=0, eval_every_steps=0)
    )
    assert again["steps"] == stopped + 2


class PoisonedIterator:
    """Wraps a training iterator and puts a NaN into the loss weights of one step."""

    def __init__(self, inner, bad_step: int):
        self.inner, self.bad_step = inner, bad_step
        self.step = inner.get_state().get("step", 0)

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.inner)
        if self.step == self.bad_step:
            batch["loss_weights"] = batch["loss_weights"].copy()
            batch["loss_weights"][0, 0] = np.nan
        self.step += 1
        return batch

    def get_state(self):
        return self.inner.get_state()


def poison(monkeypatch, bad_step: int) -> None:
    original = Experiment.__init__

    def patched(self, config, mesh=None):
        original(self, config, mesh)
        make = self.data.train_iterator
        self.data.train_iterator = lambda state=None: PoisonedIterator(make(state), bad_step)

    monkeypatch.setattr(Experiment, "__init__", patched)


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    poison(monkeypatch, bad_step=7)
    config = tiny_config(corpus=write_corpus(tmp_path), checkpoint_every_steps=5, eval_every_steps=5)
    with pytest.raises(train.NonFiniteLossError, match="non-finite loss or gradient at step 7"):
        train.train_and_evaluate(config, tmp_path / "run")
    saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [5]


def test_nan_loss_can_be_skipped_and_counted(tmp_path, monkeypatch):
    poison(monkeypatch, bad_step=3)
    config = tiny_config(corpus=write_corpus(tmp_path), on_nonfinite="skip")
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["nonfinite_steps"] == 1 and np.isfinite(results["final_eval_loss"])


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gpt2_jax")
    corpus = write_corpus(tmp_path)
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config(corpus=corpus, checkpoint_every_steps=5, num_train_steps=10), workdir)
    for f in (workdir / "checkpoints" / "10" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    results = train.train_and_evaluate(
        tiny_config(corpus=corpus, checkpoint_every_steps=5, num_train_steps=12), workdir
    )
    assert "checkpoint step 10" in caplog.text and "unreadable" in caplog.text
    assert "resumed from step 5" in caplog.text
    assert results["steps"] == 12


def test_leftover_of_a_crashed_save_is_ignored(tmp_path):
    corpus = write_corpus(tmp_path)
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config(corpus=corpus, checkpoint_every_steps=5, num_train_steps=5), workdir)
    (workdir / "checkpoints" / "9.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints")
    assert ckpt.steps() == [5]
    ckpt.close()


def test_checkpoint_of_another_architecture_is_refused_with_the_difference(tmp_path):
    corpus = write_corpus(tmp_path)
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config(corpus=corpus, num_train_steps=2), workdir)
    (workdir / "config.json").unlink()  # e.g. a checkpoint directory copied on its own
    with pytest.raises(CheckpointError) as info:
        train.train_and_evaluate(tiny_config("encoder_decoder", corpus, num_train_steps=4), workdir)
    message = str(info.value)
    assert "arch is 'decoder_only' in the checkpoint but 'encoder_decoder' in this run" in message
    assert "\n" not in message


def test_a_checkpoint_with_the_old_fused_qkv_layout_is_named_as_such():
    saved = {"arch": "decoder_only", "vocab_size": 40, "params": {"h_0/attn/c_attn/kernel": [32, 96]}}
    current = {"arch": "decoder_only", "vocab_size": 40, "params": {"h_0/attn/c_attn/kernel": [32, 3, 32]}}
    (diff,) = checkpointing.signature_diff(saved, current)
    assert "(32, 96) in the checkpoint but (32, 3, 32) in this run" in diff and "GPT-2's fused layout" in diff
    current["params"]["h_0/attn/c_attn/kernel"] = [64, 3, 64]  # another model: no layout hint
    assert "fused layout" not in checkpointing.signature_diff(saved, current)[0]


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A small finished run whose workdir the bad inputs below must leave untouched."""
    root = tmp_path_factory.mktemp("finished")
    corpus = write_corpus(root)
    workdir = root / "run"
    train.train_and_evaluate(tiny_config(corpus=corpus, num_train_steps=2), workdir)
    return corpus, workdir


def _set(**fields):
    def apply(config, root):
        for key, value in fields.items():
            node = config
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value

    return apply


def _corpus(content: bytes):
    def apply(config, root):
        path = root / "bad_corpus.txt"
        path.write_bytes(content)
        config.data.corpus = str(path)

    return apply


def _pairs(src_lines: int, tgt_lines: int):
    def apply(config, root):
        (root / "s.txt").write_text("a b\n" * src_lines)
        (root / "t.txt").write_text("c d\n" * tgt_lines)
        config.data.dataset, config.data.source_file, config.data.target_file = (
            "pairs",
            str(root / "s.txt"),
            str(root / "t.txt"),
        )

    return apply


BAD_INPUTS = {
    "unknown architecture": (_set(**{"model.arch": "decoder_encoder"}), "config.model.arch='decoder_encoder'"),
    "heads do not divide width": (_set(**{"model.num_heads": 3}), "num_heads=3 does not divide"),
    "context longer than positions": (_set(**{"model.max_len": 8}), "max_len=8 is shorter than"),
    "batch not divisible by mesh": (_set(**{"mesh.data": 3, "batch_size": 8}), "not divisible by the 3"),
    "mesh larger than the machine": (_set(**{"mesh.data": 16}), "needs 16 devices"),
    "process rank without distributed": (_set(process_id=1), "set config.distributed=True"),
    "process rank beyond the job": (
        _set(distributed=True, num_processes=2, process_id=2),
        "process_id=2 must be below config.num_processes=2",
    ),
    "coordinator without a port": (_set(distributed=True, coordinator_address="host0"), "must be 'host:port'"),
    "accumulation below one": (_set(**{"optimizer.grad_accum_steps": 0}), "grad_accum_steps must be >= 1"),
    "batch not divisible by accumulation": (_set(**{"optimizer.grad_accum_steps": 3}), "not divisible by"),
    "learning rate not positive": (_set(**{"optimizer.learning_rate": 0.0}), "learning_rate must be > 0"),
    "floor above the peak": (_set(**{"optimizer.min_learning_rate": 1.0}), "min_learning_rate must be in"),
    "beta2 out of range": (_set(**{"optimizer.b2": 1.0}), "b2 must be in [0, 1)"),
    "dropout out of range": (_set(**{"model.dropout_rate": 1.5}), "dropout_rate must be in [0, 1)"),
    "negative loss chunk": (_set(**{"model.loss_chunk_len": -1}), "loss_chunk_len must be >= 0"),
    "vocabulary padding below one": (_set(**{"model.pad_vocab_to": 0}), "pad_vocab_to must be >= 1"),
    "unknown loss form": (_set(**{"model.loss_impl": "fast"}), "config.model.loss_impl"),
    "unknown attention form": (_set(**{"model.attention_impl": "flash"}), "config.model.attention_impl"),
    "unknown dtype": (_set(**{"model.dtype": "float16"}), "config.model.dtype='float16'"),
    "cudnn without a GPU": (_set(**{"model.attention_impl": "cudnn"}), "needs a GPU"),
    "unknown remat policy": (_set(**{"model.remat_policy": "dots_saveable"}), "choose one of 'full', 'dots'"),
    "XLA option without a value": (_set(xla_options="xla_gpu_enable_triton_gemm"), "is not name=value"),
    "unknown XLA option": (_set(xla_options="xla_gpu_enable_tritton_gemm=false"), "xla_gpu_enable_tritton_gemm"),
    "sharing without an encoder": (_set(**{"model.share_encoder_decoder": True}), "needs arch='encoder_decoder'"),
    "encoder-only on causal LM": (_set(**{"model.arch": "encoder_only", "data.objective": "lm"}), "objective='mlm'"),
    "masked LM on a decoder": (_set(**{"data.objective": "mlm"}), "needs config.model.arch='encoder_only'"),
    "seq2seq on plain text": (_set(**{"data.objective": "seq2seq"}), "needs paired data"),
    "span corruption without sentinels": (_set(**{"data.objective": "span_corruption"}), "num_sentinels > 0"),
    "unknown dataset": (_set(**{"data.dataset": "c4"}), "config.data.dataset='c4'"),
    "unknown tokenizer": (_set(**{"data.tokenizer": "wordpiece"}), "config.data.tokenizer='wordpiece'"),
    "zero training steps": (_set(num_train_steps=0), "num_train_steps must be >= 1"),
    "cut at the start": (_set(**{"data.cut_fraction": 0.0}), "cut_fraction must be in (0, 1)"),
    "context of one token": (_set(**{"data.seq_len": 1}), "seq_len must be >= 2"),
    "vocabulary size mismatch": (_set(**{"model.vocab_size": 7}), "vocab_size=7 but the 'char' tokenizer"),
    "missing corpus": (_set(**{"data.corpus": "/nonexistent/corpus.txt"}), "does not exist"),
    "empty corpus": (_corpus(b"  \n"), "is empty"),
    "non-UTF-8 corpus": (_corpus(b"caf\xe9 " * 100), "not UTF-8"),
    "corpus shorter than the context": (_corpus(b"To be or not"), "fewer than one context window"),
    "misaligned parallel files": (_pairs(10, 9), "misaligned"),
    "workdir of another config": (_set(**{"model.emb_dim": 64}), "holds a run of a different config"),
}


def test_validation_leaves_the_backend_for_jax_distributed_initialize():
    """A multi-host run calls ``jax.distributed.initialize()`` after ``validate``, before JAX's backend may start.

    The checks that need the backend (cuDNN needs a GPU, XLA knows the option
    names) run when the experiment is built, and still fail before a file is
    written (``test_bad_input_fails_early_with_one_actionable_line``).
    """
    code = (
        "from jax._src import xla_bridge\n"
        "from gpt2_jax import validation\n"
        "from tests.helpers import tiny_config\n"
        "config = tiny_config(distributed=True, xla_options='xla_gpu_enable_triton_gemm=false')\n"
        "config.model.attention_impl = 'cudnn'\n"
        "validation.validate(config)\n"
        "assert not xla_bridge.backends_are_initialized()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_early_with_one_actionable_line(case, finished_run, tmp_path):
    corpus, workdir = finished_run
    mutate, expected = BAD_INPUTS[case]
    config = tiny_config(corpus=corpus, num_train_steps=2)
    mutate(config, tmp_path)
    before = digest(workdir)
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(config, workdir)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message, "one line"
    assert digest(workdir) == before, "existing files are untouched"


def test_overwrite_replaces_a_run_of_another_config(tmp_path):
    corpus = write_corpus(tmp_path)
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config(corpus=corpus, num_train_steps=2), workdir)
    results = train.train_and_evaluate(
        tiny_config(corpus=corpus, num_train_steps=2, **{"model.emb_dim": 48}), workdir, True
    )
    assert json.loads((workdir / "config.json").read_text())["model"]["emb_dim"] == 48
    assert results["steps"] == 2


def test_workdir_check_lets_a_run_move_to_another_mesh_or_machine_but_not_become_another_model(tmp_path):
    """Where and how a step is computed may change on resumption; what it computes may not.

    (The resume itself on another process count and mesh is
    ``test_sharding.test_two_processes_train_like_one_process_over_the_same_mesh``.)
    """
    corpus = write_corpus(tmp_path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(tiny_config(corpus=corpus).to_dict()))
    launch = {
        "distributed": True,
        "coordinator_address": "host0:1234",
        "num_processes": 2,
        "process_id": 1,
        "mesh.data": 4,
        "mesh.fsdp": 2,
        "mesh.tensor": 2,
        "model.remat": True,
        "model.remat_policy": "dots",
        "model.loss_chunk_len": 7,
        "model.attention_impl": "cudnn",
        "optimizer.grad_accum_steps": 2,
    }
    moved = tiny_config(corpus=corpus, **launch)
    workdir_lib.check_workdir(workdir, moved.to_dict(), overwrite=False)
    with pytest.raises(CheckpointError, match=r"model.num_heads: 2 -> 4"):
        workdir_lib.check_workdir(workdir, tiny_config(corpus=corpus, **{"model.num_heads": 4}).to_dict(), False)


def test_a_run_saved_before_a_config_field_existed_resumes_when_the_field_holds_its_default(tmp_path):
    corpus = write_corpus(tmp_path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    saved = tiny_config(corpus=corpus).to_dict()
    del saved["model"]["pad_vocab_to"]  # as code from before that field wrote it
    (workdir / "config.json").write_text(json.dumps(saved))
    workdir_lib.check_workdir(workdir, tiny_config(corpus=corpus).to_dict(), overwrite=False)
    with pytest.raises(CheckpointError, match=r"model.pad_vocab_to: None -> 64"):
        workdir_lib.check_workdir(workdir, tiny_config(corpus=corpus, **{"model.pad_vocab_to": 64}).to_dict(), False)


def test_cli_reports_errors_in_one_line(tmp_path):
    corpus = write_corpus(tmp_path, text=TEXT)
    result = subprocess.run(
        cli_args(corpus, tmp_path / "run", **{"optimizer.learning_rate": -1.0}),
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: config.optimizer.learning_rate must be > 0, got -1.0"]


def test_remat_on_the_cpu_warns_that_it_saves_no_memory_there(tmp_path, caplog):
    """XLA:CPU keeps the same peak memory with rematerialised blocks (jax-ml/jax#19822): say so, once, at set-up."""
    config = tiny_config(corpus=write_corpus(tmp_path), **{"model.remat": True})
    with caplog.at_level(logging.WARNING, logger="gpt2_jax.experiment"):
        Experiment(config)
    assert caplog.text.count("remat=True on the CPU only costs time") == 1
    caplog.clear()
    config.model.remat = False
    with caplog.at_level(logging.WARNING, logger="gpt2_jax.experiment"):
        Experiment(config)
    assert "remat" not in caplog.text
