"""Experiments: FLOP counting against XLA, matching, sweeps that resume and record failures, reports."""

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import generation_cost, report, sweeps
from gpt2_jax import decoding, flops
from gpt2_jax.model import Transformer, TransformerConfig
from tests.helpers import REPO, write_corpus

ARCHS = ("decoder_only", "prefix_lm", "encoder_decoder", "encoder_only")


@pytest.mark.parametrize("arch", ARCHS)
def test_flop_formula_within_ten_percent_of_xla(arch):
    cfg = TransformerConfig(
        arch=arch, vocab_size=300, num_layers=2, num_encoder_layers=2, num_heads=4, emb_dim=64, mlp_dim=256, max_len=96
    )
    T, S = (40, 48) if arch == "encoder_decoder" else (96, 0)
    ours, xla = flops.forward_flops(cfg, T, S), flops.xla_forward_flops(cfg, T, S)
    assert abs(ours / xla - 1) < 0.10, (ours, xla)
    assert flops.train_flops(cfg, T, S) == 3 * ours


def test_decoder_only_flops_are_6n_plus_12_l_d_t():
    cfg = TransformerConfig(vocab_size=8192, num_layers=6, num_heads=6, emb_dim=384, mlp_dim=1536, max_len=256)
    n = 6 * 12 * 384**2 + 8192 * 384  # matmul weights used per token (biases aside)
    assert flops.train_flops(cfg, 256) / 256 == pytest.approx(6 * n + 12 * 6 * 384 * 256)
    assert flops.forward_flops(cfg, 256, causal_halved=True) < flops.forward_flops(cfg, 256)


def test_param_counts_are_exact_and_matching_finds_depths():
    base = TransformerConfig(
        arch="encoder_decoder",
        vocab_size=64,
        num_layers=2,
        num_encoder_layers=2,
        num_heads=4,
        emb_dim=64,
        mlp_dim=256,
        max_len=64,
    )
    counts = flops.params(base)
    assert counts["total"] == counts["embedding"] + counts["non_embedding"]
    assert counts["embedding"] == 64 * 64 + 2 * 64 * 64  # wte, wpe, encoder_wpe
    by_params = flops.match_layers(base, (20, 20), "decoder_only", (39, 0), match="params")
    assert abs(by_params.mismatch) < 0.10 and by_params.config.num_layers == 5
    by_flops = flops.match_layers(base, (20, 20), "decoder_only", (39, 0), match="flops")
    assert by_flops.config.num_layers == 2 and abs(by_flops.mismatch) < 0.25
    shared = dataclasses.replace(base, share_encoder_decoder=True)
    assert flops.params(shared)["total"] < counts["total"]
    assert flops.forward_flops(shared, 20, 20) == flops.forward_flops(base, 20, 20)


def test_arch_table_dry_run_matches_flops_and_parameters():
    sweep = sweeps.load(str(REPO / "configs/sweeps/arch_table.py"))
    cells = {labels["model"]: sweeps.apply(sweep.base, o) for labels, o in sweep.cells() if labels["task"] == "op-last"}
    ed, do_l = cells["ED 2+2"], cells["DO 2"]
    deep = next(name for name in cells if name.startswith("DO ") and name != "DO 2")
    f_ed = sweeps.example_flops(ed, sweep.example_lengths)
    f_do = sweeps.example_flops(do_l, sweep.example_lengths)
    assert abs(f_ed / f_do - 1) <= 0.15, "ED L+L and DO L within 15% in FLOPs per example"
    assert abs(sweeps.param_count(ed) / sweeps.param_count(cells[deep]) - 1) <= 0.10, "within 10% in parameters"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--sweep=configs/sweeps/arch_table.py",
            "--workdir=unused",
            "--dry_run",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "90 tuning runs (90 cells x seeds [0]), then 120 runs (30 cells at their chosen lr" in result.stdout
    assert "| op-last / ED 2+2 / 1e-2 |" in result.stdout and "| op-first / DO 2 restart / 3e-3 |" in result.stdout
    assert "| op-last / PLM 2 t5_bias / 1e-3 |" in result.stdout
    fixed = sweeps.load(f"{REPO / 'configs/sweeps/arch_table.py'}:fixed_lr")
    assert len(fixed.runs()) == 42 and len(fixed.cells()) == 14 and not fixed.tune


SWEEP_FILE = """
from configs import default
from experiments.sweeps import Metric, Sweep

def get_sweep(variant="ok"):
    base = default.get_config()
    base.data.corpus = {corpus!r}
    base.mesh.data = 1
    base.model.num_layers, base.model.emb_dim, base.model.num_heads = 1, 16, 2
    base.data.seq_len, base.batch_size, base.eval_batch_size = 8, 4, 16
    base.num_train_steps = base.eval_every_steps = base.checkpoint_every_steps = 3
    cells = [("a", {{}}), ("b", {{"model.arch": "prefix_lm"}})]
    if variant == "broken":
        cells = [("bad", {{"model.num_heads": 3}}), cells[0]]
    metrics = [Metric("loss", "results.final_eval_loss", higher_is_better=False)]
    if variant == "tuned":  # learning rate chosen per cell on seed 0's validation loss; seeds 1 and 2 at the choice
        rates = [(r, {{"optimizer.learning_rate": float(r)}}) for r in ("1e-3", "3e-3")]
        return Sweep(name="tiny", hypothesis="A tiny sweep.", base=base, axes=[("model", cells), ("lr", rates)],
                     seeds=[0, 1, 2], metrics=metrics, matched="nothing", tune="lr", tune_seeds=[0],
                     tune_metric=Metric("val loss", "results.best_eval_loss", higher_is_better=False))
    return Sweep(name="tiny", hypothesis="A tiny sweep.", base=base, axes=[("model", cells)], seeds=[0],
                 metrics=metrics, matched="nothing")
"""


def tiny_sweep(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_sweep.py"
    path.write_text(SWEEP_FILE.format(corpus=str(write_corpus(tmp_path))))
    return path


def sweep_cmd(path: Path, workdir: Path, variant: str = "ok") -> list[str]:
    return [sys.executable, "-m", "experiments.sweep", f"--sweep={path}:{variant}", f"--workdir={workdir}"]


def test_interrupted_sweep_resumes_and_runs_only_the_rest(tmp_path):
    path, workdir = tiny_sweep(tmp_path), tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        sweep_cmd(path, workdir),
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = workdir / "runs" / "a__s0" / "status.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (first.exists() and json.loads(first.read_text())["state"] == "done"):
        assert process.poll() is None, process.stderr.read()[-2000:]
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its running worker
    process.wait()
    done_before = first.stat().st_mtime_ns
    result = subprocess.run(sweep_cmd(path, workdir), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 of 2 runs already finished; running 1" in result.stdout
    assert first.stat().st_mtime_ns == done_before, "the finished run was not redone"
    assert json.loads((workdir / "runs" / "b__s0" / "status.json").read_text())["state"] == "done"
    assert (workdir / "report.md").exists() and (workdir / "main_metric.png").exists()


def test_a_failing_run_is_reported_and_does_not_stop_the_others(tmp_path):
    path, workdir = tiny_sweep(tmp_path), tmp_path / "sweep"
    result = subprocess.run(sweep_cmd(path, workdir, "broken"), cwd=REPO, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    bad = json.loads((workdir / "runs" / "bad__s0" / "status.json").read_text())
    assert bad["state"] == "failed" and "num_heads=3 does not divide" in bad["error"]
    assert json.loads((workdir / "runs" / "a__s0" / "status.json").read_text())["state"] == "done"
    text = (workdir / "report.md").read_text()
    assert "## Failed runs" in text and "bad__s0" in text and "| bad | — | 0 (1 failed) |" in text


def test_a_sweep_saved_before_a_config_field_existed_resumes_and_a_changed_field_is_named(tmp_path):
    sweep = sweeps.load(f"{tiny_sweep(tmp_path)}:ok")
    workdir = tmp_path / "sw"
    run_json = sweeps.prepare(sweep, workdir)[0][1] / "run.json"
    saved = json.loads(run_json.read_text())
    del saved["config"]["model"]["pad_vocab_to"]  # as code from before that field wrote it
    run_json.write_text(json.dumps(saved))
    sweeps.prepare(sweep, workdir)  # the field holds its default: the same run
    assert json.loads(run_json.read_text())["config"]["model"]["pad_vocab_to"] == 1
    saved["config"]["model"]["pad_vocab_to"] = 64
    run_json.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"different config \(model.pad_vocab_to: 64 -> 1\)"):
        sweeps.prepare(sweep, workdir)


def test_report_aggregates_seeds_on_hand_made_results(tmp_path):
    path = tiny_sweep(tmp_path)
    sweep = sweeps.load(f"{path}:ok")
    sweep.seeds = [0, 1, 2]
    values = {"a": [1.0, 2.0, 3.0], "b": [4.0, 4.0, 7.0]}
    for spec in sweep.runs():
        run_dir = tmp_path / "sw" / "runs" / spec.name
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(
            json.dumps({"name": spec.name, "labels": spec.labels, "seed": spec.seed, "config": spec.config.to_dict()})
        )
        loss = values[spec.labels["model"]][spec.seed]
        (run_dir / "status.json").write_text(
            json.dumps(
                {
                    "state": "done",
                    "results": {
                        "final_eval_loss": loss,
                        "num_params": 1000,
                        "loss_tokens_seen": 10.0,
                        "wall_time_s": 2.0,
                    },
                }
            )
        )
        (run_dir / "train").mkdir()
        (run_dir / "train" / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "split": "eval", "loss": loss + 1 / s}) + "\n" for s in (1, 2, 3))
        )
    rows = report.aggregate(report.collect(tmp_path / "sw"), sweep)
    a, b = rows
    assert a["loss"] == pytest.approx((2.0, 1.0)) and a["seeds"] == 3
    assert b["loss"][0] == pytest.approx(5.0) and b["loss"][1] == pytest.approx(math.sqrt(3.0))
    md = report.write(tmp_path / "sw", sweep)
    assert "| a | 2.000 ± 1.000 | 3 |" in md and "| b | 5.000 ± 1.732 | 3 |" in md
    assert (tmp_path / "sw" / "learning_curves.png").stat().st_size > 1000


@pytest.mark.slow  # starting a local Ray cluster takes most of a minute
def test_sweep_runs_on_a_ray_cluster(tmp_path):
    pytest.importorskip("ray", reason="the cluster extra (ray) is not installed")
    path, workdir = tiny_sweep(tmp_path), tmp_path / "sweep"
    result = subprocess.run(
        [*sweep_cmd(path, workdir), "--launcher=ray"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "RAY_DISABLE_USAGE_STATS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for run in ("a__s0", "b__s0"):
        assert json.loads((workdir / "runs" / run / "status.json").read_text())["state"] == "done"
    assert "a__s0: done" in result.stdout


def test_datasheet_peaks_match_device_kinds():
    def device(platform, kind):
        return types.SimpleNamespace(platform=platform, device_kind=kind)

    assert flops.datasheet_peak(device("gpu", "NVIDIA H100 80GB HBM3"), "bfloat16") == 989e12
    assert flops.datasheet_peak(device("gpu", "NVIDIA H100 PCIe"), "bfloat16") == 756e12, "the specific name first"
    assert flops.datasheet_peak(device("gpu", "NVIDIA H200"), "float32") == 67e12
    assert flops.datasheet_peak(device("tpu", "TPU v5 lite"), "bfloat16") == 197e12
    assert flops.datasheet_peak(device("cpu", "cpu"), "float32") is None
    assert flops.datasheet_peak(device("gpu", "NVIDIA GeForce RTX 4090"), "bfloat16") is None


def test_benchmark_times_every_runner_and_reports_mfu(capsys, tmp_path):
    from experiments import bench

    shape = bench.Shape(layers=1, width=32, heads=2, context=16, batch=2, vocab=64)
    assert bench.parse_runner("decoder_only", "xla") == ("decoder_only", "xla", {})
    assert bench.parse_runner("prefix_lm:cudnn", "xla") == ("prefix_lm", "cudnn", {})
    assert bench.parse_runner("decoder_only@remat=true@loss_chunk_len=0", "xla") == (
        "decoder_only",
        "xla",
        {"remat": "true", "loss_chunk_len": "0"},
    )
    overrides = {"remat": "true", "pad_vocab_to": "8", "num_layers": "3"}
    config = bench._bench_config("decoder_only", shape, "float32", "xla", overrides=overrides)
    assert config.model.remat is True and config.model.pad_vocab_to == 8
    assert config.model.num_layers == 3, "a runner's own settings win over the shape's"
    with pytest.raises(ValueError, match="unknown model config field 'remats'"):
        bench._bench_config("decoder_only", shape, "float32", "xla", overrides={"remats": "true"})
    runners = [bench.ours(arch, shape) for arch in ("decoder_only", "encoder_decoder")]
    runners.append(
        bench.ours("decoder_only", shape, overrides={"loss_chunk_len": "4"}, xla_options=f"xla_dump_to={tmp_path}")
    )
    assert any(".jit__lambda." in p.name for p in tmp_path.iterdir()), "the runner compiles with its XLA options"
    assert runners[-1].name == "ours decoder_only loss_chunk_len=4"
    bench.interleave(runners, rounds=2, steps=2)
    assert [len(r.times) for r in runners] == [2, 2, 2] and all(t > 0 for r in runners for t in r.times)
    do, ed, _ = runners
    assert do.tokens_per_step == ed.tokens_per_step == 32
    cfg = TransformerConfig(vocab_size=64, num_layers=1, num_heads=2, emb_dim=32, mlp_dim=128, max_len=16)
    assert do.flops_per_step == flops.train_flops(cfg, 16) * 2
    assert do.memory_bytes > 0 and do.compile_s > 0
    bench.report(runners, peak=1e9, peak_source="test")
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("ours decoder_only"))
    tokens_per_s, mfu = float(row.split()[2]), float(row.split()[-1].rstrip("%"))
    spread = float(row.split()[4].rstrip("%"))
    assert spread == pytest.approx(100 * (max(do.times) - min(do.times)) / do.median(), abs=0.5)
    assert tokens_per_s == pytest.approx(32 / do.median(), rel=0.01)
    assert mfu == pytest.approx(100 * do.flops_per_step / do.median() / 1e9, rel=0.01)


def test_seeds_flag_overrides_the_sweeps_seeds(tmp_path):
    path = tiny_sweep(tmp_path)
    cmd = [*sweep_cmd(path, tmp_path / "sweep"), "--seeds=3,4", "--dry_run"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 runs (2 cells x 2 seeds)" in result.stdout, result.stdout


def test_a_sweep_tuned_on_some_seeds_lists_both_stages_and_refuses_seeds_without_them(tmp_path):
    path = tiny_sweep(tmp_path)
    dry = subprocess.run(
        [*sweep_cmd(path, tmp_path / "sw", "tuned"), "--dry_run"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "4 tuning runs (4 cells x seeds [0]), then 4 runs (2 cells at their chosen lr x seeds [1, 2])" in dry.stdout
    refused = subprocess.run(
        [*sweep_cmd(path, tmp_path / "sw", "tuned"), "--seeds=1,2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "the tuning seeds [0] must be among the sweep's seeds [1, 2]" in refused.stderr
    assert not (tmp_path / "sw" / "runs").exists()


def test_cells_flag_narrows_the_dry_run_and_a_pattern_matching_nothing_is_one_line(tmp_path):
    path = tiny_sweep(tmp_path)
    cmd = [*sweep_cmd(path, tmp_path / "sw", "tuned"), "--cells=^b$"]
    dry = subprocess.run([*cmd, "--dry_run"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "2 tuning runs (2 cells x seeds [0]), then 2 runs (1 cell at their chosen lr x seeds [1, 2])" in dry.stdout
    cmd[-1] = "--cells=^c$"
    refused = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "error: --cells '^c$' matches none of the cells: a; b" in refused.stderr
    assert not (tmp_path / "sw" / "runs").exists()


def test_decode_entries_name_a_split_and_an_optional_beam():
    assert sweeps.decode_entry("test") == ("test", 0)
    assert sweeps.decode_entry("test_2017:beam4") == ("test_2017", 4)
    for bad in ("test:beam", "test:beam0", "test:greedy", "test:4"):
        with pytest.raises(ValueError, match=rf"decode entry '{bad}': write a split"):
            sweeps.decode_entry(bad)


def test_profile_step_attributes_the_step_time_to_matmuls_attention_and_loss(tmp_path):
    from experiments import bench, profile_step

    assert profile_step.categorize("dot.3", "jit(f)/transpose(jvp(Transformer))/h_0/mlp/c_fc/transpose") == (
        "dense matmuls (bwd)"
    )
    assert profile_step.categorize("fusion.1", "jit(f)/jvp(Transformer)/h_1/attn/exp") == "attention (fwd)"
    assert profile_step.categorize("fusion.2", "jit(f)/jvp(Transformer)/h_1/ln_1/mul") == "layernorm (fwd)"
    loss_matmul = "jit(f)/jvp(Transformer.loss)/while/body/closed_call/tv,td->vd/dot_general"
    assert profile_step.categorize("dot.4", loss_matmul) == "output layer + loss (fwd)"
    stack_matmul = "jit(f)/transpose(jvp(Transformer.loss))/Transformer.features/h_0/attn/c_proj/transpose"
    assert profile_step.categorize("dot.9", stack_matmul) == "dense matmuls (bwd)"
    shape = bench.Shape(layers=2, width=32, heads=2, context=16, batch=2, vocab=64)
    runner = bench.ours("decoder_only", shape, overrides={"loss_chunk_len": "8"})  # the loss in a 2-chunk loop
    step_ms, events = profile_step.profile(runner, 2, str(tmp_path))
    per_op, per_category = profile_step.summarize(events, profile_step.op_names(runner.hlo_text), 2)
    assert step_ms > 0 and per_op and all(ms >= 0 for ms in per_op.values())
    # The loop is not counted on top of the operations of its body.
    loops = re.findall(r"^\s*%?([\w.\-]+) = [^\n]*? while\(", runner.hlo_text, re.M)
    traced = {e.get("name") for e in events}
    assert loops and set(loops) <= traced and not set(loops) & set(per_op), (loops, sorted(per_op))
    assert any("/while/body/" in profile_step.op_names(runner.hlo_text)[op] for op in per_op)
    for category in ("dense matmuls (fwd)", "dense matmuls (bwd)", "attention (fwd)", "output layer + loss (fwd)"):
        assert per_category[category] > 0, (category, per_category)
    assert sum(per_category.values()) == pytest.approx(sum(per_op.values()))
    assert (tmp_path / "compiled_hlo.txt").read_text() == runner.hlo_text


def _xla_flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


@pytest.mark.parametrize("arch", ["decoder_only", "encoder_decoder"])
def test_generation_flop_formulas_within_ten_percent_of_xla(arch):
    """A prefill, a cached step and an encoding, each against XLA's count of the compiled program."""
    cfg = TransformerConfig(
        arch=arch, vocab_size=300, num_layers=2, num_encoder_layers=2, num_heads=4, emb_dim=64, mlp_dim=256, max_len=96
    )
    model, params = Transformer(cfg), flops.abstract_params(cfg, 8, 8)
    S, T = 48, 96
    encoder = decoding.encoder_inputs([np.ones(S, np.int32)], 0, 1)
    encoder.pop("bos_id")
    encoded = jnp.zeros((1, S, cfg.emb_dim))
    ed = arch == "encoder_decoder"
    cross = (
        jax.eval_shape(lambda p: model.apply({"params": p}, encoded, method=Transformer.cross_kv), params)
        if ed
        else None
    )
    cross_mask = jnp.ones((1, 1, 1, S), bool) if ed else None

    def cached(q: int):
        def run(p, cache, cross):
            tokens = jnp.zeros((1, q), jnp.int32)
            positions = jnp.arange(q, dtype=jnp.int32)[None]
            mask = jnp.ones((1, 1, q, T), bool)
            at = jnp.array([q - 1])
            return model.apply(
                {"params": p},
                tokens,
                positions,
                mask,
                cache,
                jnp.zeros(1, jnp.int32),
                cross,
                cross_mask,
                at,
                method=Transformer.cached_forward,
            )

        return _xla_flops(run, params, decoding.init_cache(cfg, 1, T), cross)

    for q in (1, 64):
        ours = flops.cached_flops(cfg, q, T, encoder_len=S if ed else 0)
        assert abs(ours / cached(q) - 1) < 0.10, (q, ours, cached(q))
    if ed:

        def encode(p, batch):
            return model.apply(
                {"params": p}, model.apply({"params": p}, batch, method=Transformer.encode), method=Transformer.cross_kv
            )

        xla = _xla_flops(encode, params, encoder)
        assert abs(flops.encode_flops(cfg, S) / xla - 1) < 0.10, (flops.encode_flops(cfg, S), xla)


def test_generation_cost_counts_the_recomputed_context():
    """Per generated token, the prefix-LM and the encoder-decoder pay for reprocessing the context every turn."""
    costs = {
        arch: generation_cost.conversation_flops(generation_cost.model_config(arch, 1152, 2, 128), 1024, 4, 32) / 128
        for arch in generation_cost.ARCHS
    }
    cfg = generation_cost.model_config("decoder_only", 1152, 2, 128)
    prefill = flops.cached_flops(cfg, 1024, 1024)
    assert costs["decoder_only"] == pytest.approx(
        (prefill + sum(flops.cached_flops(cfg, 1, 1024 + j + 1) for j in range(128))) / 128
    )
    assert costs["prefix_lm"] > 3 * costs["decoder_only"] and costs["encoder_decoder"] > 3 * costs["decoder_only"]
    last = {
        arch: generation_cost.turn_flops(generation_cost.model_config(arch, 1152, 2, 128), 1024, 3, 32)
        for arch in generation_cost.ARCHS
    }
    assert last["decoder_only"] == sum(flops.cached_flops(cfg, 1, 1024 + 96 + j + 1) for j in range(32))
    assert min(last["prefix_lm"], last["encoder_decoder"]) > 10 * last["decoder_only"], "a later turn only appends"


def test_generation_cost_runs_every_conversation_and_writes_its_report(tmp_path):
    rows = [generation_cost.measure(arch, 16, 2, 4, 1, 1, 64) for arch in generation_cost.ARCHS]
    assert all(r["tokens_per_s"] > 0 and r["flops_per_token"] > 0 for r in rows)
    generation_cost.write_report(rows, tmp_path, "a test")
    report = (tmp_path / "report.md").read_text()
    assert "| 16 |" in report and (tmp_path / "generation_cost.png").stat().st_size > 0
