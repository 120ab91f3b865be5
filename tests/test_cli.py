"""The command line: configs load, overrides apply, mistakes fail with one clear line."""

import subprocess
import sys

import pytest

from configs import default, shakespeare_char
from tests.helpers import REPO, write_corpus


def run_main(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "gpt2_jax.main", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_shakespeare_char_variants_match_nanogpt():
    gpu, cpu = shakespeare_char.get_config(), shakespeare_char.get_config("cpu")
    assert (gpu.model.num_layers, gpu.model.num_heads, gpu.model.emb_dim) == (6, 6, 384)
    assert (gpu.data.seq_len, gpu.batch_size, gpu.num_train_steps, gpu.model.dropout_rate) == (256, 64, 5000, 0.2)
    assert (gpu.optimizer.learning_rate, gpu.optimizer.min_learning_rate) == (1e-3, 1e-4)
    assert (gpu.optimizer.warmup_steps, gpu.optimizer.b2) == (100, 0.99)
    assert (cpu.model.num_layers, cpu.model.num_heads, cpu.model.emb_dim) == (4, 4, 128)
    assert (cpu.data.seq_len, cpu.batch_size, cpu.num_train_steps, cpu.model.dropout_rate) == (64, 12, 2000, 0.0)
    assert (cpu.optimizer.learning_rate, cpu.optimizer.min_learning_rate) == (3e-3, 3e-4)
    with pytest.raises(ValueError, match="unknown variant"):
        shakespeare_char.get_config("tpu")


def test_every_default_field_is_documented():
    source = (REPO / "configs" / "default.py").read_text().splitlines()
    config = default.get_config()

    def leaves(c, prefix=""):
        for k, v in c.items():
            if hasattr(v, "items"):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    for field in leaves(config):
        line = next(ln for ln in source if f"config.{field} =" in ln)
        idx = source.index(line)
        assert "#" in line or source[idx - 1].strip().startswith("#"), f"config.{field} has no comment"


def test_mistyped_config_field_fails_clearly(tmp_path):
    result = run_main("--config=configs/shakespeare_char.py:cpu", f"--workdir={tmp_path}", "--config.model.num_layer=2")
    assert result.returncode != 0
    assert "num_layer" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_file_fails_clearly(tmp_path):
    result = run_main(
        "--config=configs/shakespeare_char.py:cpu",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.corpus={tmp_path / 'nope.txt'}",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: data file")
    assert "does not exist" in result.stderr and "GPT2_JAX_DATA_DIR" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_value_fails_before_compiling(tmp_path):
    result = run_main("--config=configs/shakespeare_char.py:cpu", f"--workdir={tmp_path}", "--config.model.num_heads=3")
    assert result.returncode == 2
    assert "num_heads=3 does not divide config.model.emb_dim=128" in result.stderr


def test_cli_trains_evaluates_and_resumes(tmp_path):
    corpus = write_corpus(tmp_path)
    args = [
        "--config=configs/shakespeare_char.py:cpu",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.corpus={corpus}",
        "--config.model.num_layers=1",
        "--config.model.emb_dim=32",
        "--config.data.seq_len=16",
        "--config.mesh.data=1",
        "--config.eval_every_steps=5",
    ]
    first = run_main(*args, "--config.num_train_steps=5")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "final eval loss" in first.stdout
    second = run_main(*args, "--config.num_train_steps=10")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from step 5" in second.stderr
