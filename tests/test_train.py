"""One train step for every architecture: it learns, accumulates exactly, resumes exactly."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from gpt2_jax import batch as batch_lib
from gpt2_jax import optim, train, validation
from gpt2_jax.data import objectives, synthetic
from gpt2_jax.experiment import Experiment
from gpt2_jax.metrics_writer import read_metrics
from tests.helpers import tiny_config, write_corpus

ARCHS = ("decoder_only", "prefix_lm", "encoder_decoder", "encoder_only")


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_overfits_one_batch(corpus, arch):
    config = tiny_config(arch, corpus)
    config.optimizer.learning_rate = 3e-3
    config.optimizer.min_learning_rate = 3e-3
    config.optimizer.weight_decay = 0.0
    exp = Experiment(config)
    state = exp.init_state()
    batch = exp.place(next(exp.data.train_iterator()))
    first = None
    for _ in range(150):
        state, metrics = exp.train_step(state, batch)
        loss = float(metrics["loss_sum"] / metrics["weight_sum"])
        first = loss if first is None else first
    assert first > 2.0
    assert loss < 0.05, f"{arch} did not memorise one batch: {first:.3f} -> {loss:.3f}"


def test_gradient_accumulation_equals_full_batch(corpus):
    results = {}
    for accum in (1, 4):
        config = tiny_config("prefix_lm", corpus, **{"optimizer.grad_accum_steps": accum, "data.random_cut": True})
        exp = Experiment(config)
        state = exp.init_state()
        batches = exp.data.train_iterator()
        for _ in range(3):
            state, metrics = exp.train_step(state, exp.place(next(batches)))
        results[accum] = (jax.device_get(state.params), jax.device_get(metrics))
    (p1, m1), (p4, m4) = results[1], results[4]
    np.testing.assert_allclose(m1["loss_sum"], m4["loss_sum"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_clipped_metric_marks_the_steps_whose_gradient_norm_reaches_the_threshold(corpus):
    """A threshold just under the first step's gradient norm marks it clipped; just over, not; 0 turns clipping off."""
    norm = None
    for scale, expected in ((None, None), (0.99, 1.0), (1.01, 0.0), (0.0, 0.0)):
        clip = 1e6 if scale is None else scale * norm
        exp = Experiment(tiny_config("decoder_only", corpus, **{"optimizer.grad_clip_norm": clip}))
        _, metrics = exp.train_step(exp.init_state(), exp.place(next(exp.data.train_iterator())))
        if scale is None:
            norm = float(metrics["grad_norm"])
            assert float(metrics["clipped"]) == 0.0
        else:
            assert float(metrics["clipped"]) == expected, (scale, norm)


def test_xla_options_reach_the_compiled_steps_and_change_nothing_computed(tmp_path, corpus):
    """``xla_dump_to`` makes XLA write the programs it compiles: the option reached the train and eval steps."""
    assert validation.xla_options(" a=true, b=3 ,c=0.5,d=x,") == {"a": True, "b": 3, "c": 0.5, "d": "x"}
    dump = tmp_path / "xla_dump"
    results = {}
    for options in ("", f"xla_dump_to={dump},xla_cpu_enable_fast_math=false"):
        exp = Experiment(tiny_config("decoder_only", corpus, xla_options=options))
        state = exp.init_state()
        batch = exp.place(next(exp.data.train_iterator()))
        state, metrics = exp.train_step(state, batch)
        results[options] = (jax.device_get(metrics["loss_sum"]), exp.evaluate(state.params)["loss"])
    dumped = {p.name for p in dump.iterdir()}
    assert any(".jit_train_step." in name for name in dumped) and any(".jit_eval_step." in name for name in dumped)
    (a, b) = results.values()
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_weight_decay_mask_and_schedule():
    params = {
        "wte": {"embedding": 0},
        "h_0": {"ln_1": {"scale": 0, "bias": 0}, "attn": {"c_attn": {"kernel": 0, "bias": 0}}},
    }
    mask = traverse_util.flatten_dict(optim.decay_mask(params), sep="/")
    assert mask == {
        "wte/embedding": False,
        "h_0/ln_1/scale": False,
        "h_0/ln_1/bias": False,
        "h_0/attn/c_attn/kernel": True,
        "h_0/attn/c_attn/bias": False,
    }
    assert traverse_util.flatten_dict(optim.decay_mask(params, decay_embeddings=True), sep="/")["wte/embedding"]
    config = tiny_config()
    config.optimizer.warmup_steps = 10
    sched = optim.schedule(config.optimizer, 100)
    assert float(sched(0)) == 0.0
    assert float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(100)) == pytest.approx(1e-4)
    assert 1e-4 < float(sched(55)) < 1e-3
    config.optimizer.schedule = "constant"
    sched = optim.schedule(config.optimizer, 100)
    assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(5e-4)
    assert [float(sched(s)) for s in (10, 55, 100, 1000)] == pytest.approx([1e-3] * 4)


@pytest.mark.parametrize("arch", ARCHS)
def test_train_and_evaluate_writes_the_run(tmp_path, corpus, arch):
    config = tiny_config(arch, corpus)
    workdir = tmp_path / "run"
    results = train.train_and_evaluate(config, workdir)
    for key in ("final_eval_loss", "best_eval_loss", "num_params", "tokens_seen", "wall_time_s", "train_tokens_per_s"):
        assert key in results
    assert results["final_eval_loss"] < 4.0  # started near log(vocab) ~ 3.5-4; it learned something
    assert json.loads((workdir / "results.json").read_text()) == results
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["arch"] == arch and saved["model"]["vocab_size"] > 0
    events = read_metrics(workdir)
    assert {"train", "eval"} <= {e["split"] for e in events}
    assert all({"step", "split", "loss"} <= set(e) for e in events)
    assert [e["step"] for e in events if e["split"] == "eval"] == [10, 20]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "20"]
    assert results["tokens_seen"] >= 20 * 8 * 8
    assert results["loss_tokens_seen"] <= results["tokens_seen"]
    # Model FLOP/s per device in every train event; MFU only where a datasheet peak exists (not on CPUs).
    exp = Experiment(config)
    batch = next(exp.data.train_iterator())
    positions = sum(batch[k].size for k in ("input_tokens", "encoder_input_tokens") if k in batch)
    for e in (e for e in events if e["split"] == "train"):
        assert e["model_tflops_per_s_per_device"] > 0 and "mfu" not in e
        assert 0.0 <= e["clipped_fraction"] <= 1.0 and e["grad_norm"] > 0
        # Over the same window: FLOPs per step / tokens per step (tokens_per_s counts real tokens, <= positions).
        per_token = e["model_tflops_per_s_per_device"] * 1e12 * exp.mesh.size / e["tokens_per_s"]
        assert per_token >= exp.flops_per_step / positions * (1 - 1e-6)
        if batch_lib.count_tokens(batch)[0] == positions:  # no padding: exactly FLOPs per position
            assert per_token == pytest.approx(exp.flops_per_step / positions, rel=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_gives_the_same_final_loss(tmp_path, corpus, arch):
    # The learning-rate schedule is pinned to 20 steps so that a run stopped
    # after its step-10 checkpoint is exactly the first half of the full run.
    pinned = {"optimizer.decay_steps": 20, "model.dropout_rate": 0.1, "model.num_layers": 1}
    straight = train.train_and_evaluate(tiny_config(arch, corpus, **pinned), tmp_path / "straight")
    resumed_dir = tmp_path / "resumed"
    train.train_and_evaluate(tiny_config(arch, corpus, num_train_steps=10, **pinned), resumed_dir)
    resumed = train.train_and_evaluate(tiny_config(arch, corpus, **pinned), resumed_dir)
    assert resumed["final_eval_loss"] == straight["final_eval_loss"]
    assert resumed["params_sha256"] == straight["params_sha256"]
    assert resumed["tokens_seen"] == straight["tokens_seen"]
    steps = [e["step"] for e in read_metrics(resumed_dir) if e["split"] == "train"]
    assert steps == sorted(set(steps)), "a resumed run must not log a step twice"


@pytest.mark.parametrize("arch", ["decoder_only", "prefix_lm", "encoder_decoder"])
def test_translation_trains_every_arch_on_the_same_targets(tmp_path, arch):
    config = tiny_config(arch, **{"data.dataset": "multi30k", "data.tokenizer": "sentencepiece"})
    config.data.vocab_size = 1000
    config.data.seq_len = 96
    config.eval_batch_size = 256
    config.num_train_steps, config.eval_every_steps, config.checkpoint_every_steps = 4, 4, 4
    results = train.train_and_evaluate(config, tmp_path / arch)
    assert results["eval"]["validation"]["examples"] > 900
    assert set(results["eval"]) == {"validation", "test"}
    assert 0 < results["final_eval_loss"] < 8


def test_in_context_regression_trains(tmp_path):
    config = tiny_config("prefix_lm", **{"data.dataset": "icl_regression"})
    config.data.icl.num_train, config.data.icl.num_eval = 256, 8
    config.num_train_steps, config.eval_every_steps, config.checkpoint_every_steps = 30, 30, 30
    results = train.train_and_evaluate(config, tmp_path / "icl")
    assert results["eval"]["validation"]["loss_tokens"] == 8 * config.data.icl.num_queries
    zero = synthetic.zero_predictor_mse(config.data.icl.dim, 0.0, "uniform")  # d/3
    assert results["final_eval_loss"] < 2 * zero
    assert results["eval"]["test"]["loss_tokens"] == results["eval"]["validation"]["loss_tokens"]


def test_encoder_decoder_learns_in_context_regression_with_a_loss_on_every_query(tmp_path):
    """d = 1: the encoder-decoder leaves the zero predictor within 200 steps when every query carries loss
    (with one query per sequence it sits near it for about 1,000 steps at d = 2, then learns)."""
    config = tiny_config("encoder_decoder", **{"data.dataset": "icl_regression", "model.emb_dim": 64})
    icl = config.data.icl
    icl.dim, icl.num_examples, icl.num_queries, icl.num_train, icl.num_eval = 1, 8, 4, 5000, 200
    config.batch_size, config.eval_batch_size = 64, 100
    config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 200
    config.optimizer.learning_rate, config.optimizer.min_learning_rate, config.optimizer.warmup_steps = 1e-3, 1e-4, 50
    results = train.train_and_evaluate(config, tmp_path / "icl")
    assert results["eval"]["test"]["loss"] < 0.1 * synthetic.zero_predictor_mse(1, 0.0, "uniform")


def test_facts_train_and_report_exact_match_and_ranks_both_ways(tmp_path):
    config = tiny_config("decoder_only", **{"data.dataset": "facts", "data.facts.num_facts": 8, "data.seq_len": 48})
    config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 4
    results = train.train_and_evaluate(config, tmp_path / "facts")
    for split in ("validation", "reverse"):
        assert 0 <= results["eval"][split]["exact_match"] <= 1
        ranking = results["eval"][split]["ranking"]
        assert 1 <= ranking["rank_mean"] <= 8 and ranking["candidates"] == 8 and ranking["chance_rank_mean"] == 4.5


@pytest.mark.parametrize("arch", ["decoder_only", "encoder_only"])
def test_answer_ranks_follow_each_candidates_loss(arch):
    """The batched ranking equals scoring each (question, candidate) alone with the model's loss."""
    config = tiny_config(arch, **{"data.dataset": "facts", "data.facts.num_facts": 5, "data.seq_len": 48})
    exp = Experiment(config)
    params = exp.init_state().params
    loss = jax.jit(lambda p, b: exp.model.apply({"params": p}, b, method=exp.model.loss)[0])
    for split in ("validation", "reverse"):
        want = []
        for question in range(5):
            nll = [
                float(
                    loss(
                        params,
                        objectives.convert([exp.data._question(split, question, a)], arch, exp.data.tokenizer, 1, 48),
                    )
                )
                for a in range(5)
            ]
            want.append(1 + sum(n < nll[question] - 1e-4 for n in nll))
        got = exp.rank_answers(params, split)
        assert got["rank_mean"] == pytest.approx(np.mean(want)) and got["chance_rank_mean"] == 3.0
        assert got["top1"] == pytest.approx(np.mean(np.array(want) == 1))


@pytest.mark.slow
def test_synthetic_config_copy_task_above_95_percent(tmp_path):
    from configs import synthetic

    config = synthetic.get_config("copy")
    config.mesh.data = 1
    results = train.train_and_evaluate(config, tmp_path / "copy")
    assert results["final_eval_exact_match"] > 0.95
