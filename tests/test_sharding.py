"""SPMD on 8 fake CPU devices: sharded training equals one device, checkpoints move between meshes."""

import json
import logging
import os
import random
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gpt2_jax import checkpointing, evaluate, runs, sharding, train
from gpt2_jax.errors import ConfigError
from gpt2_jax.experiment import Experiment
from gpt2_jax.generation import complete
from tests.helpers import REPO, collective_bytes, loop_collectives, tiny_config, write_corpus

ARCHS = ("decoder_only", "prefix_lm", "encoder_decoder", "encoder_only")


def mesh_config(data, fsdp, tensor):
    return {"mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor}


def one_step(config):
    config.model.num_layers = 1  # the sharding rules are per layer; one keeps compilation short
    exp = Experiment(config)
    state = exp.init_state()
    batch = next(exp.data.train_iterator())
    state, metrics = exp.train_step(state, exp.place(batch))
    return exp, state, jax.device_get(metrics)


def test_eight_fake_devices_are_present():
    assert len(jax.devices()) == 8, "tests run with XLA_FLAGS=--xla_force_host_platform_device_count=8"


@pytest.mark.parametrize(
    "arch, positional",
    [*((arch, "learned") for arch in ARCHS), ("prefix_lm", "rope"), ("encoder_decoder", "t5_bias")],
)
def test_one_step_on_a_2x2x2_mesh_equals_one_device(tmp_path, arch, positional):
    corpus = write_corpus(tmp_path)
    # The loss in uneven chunks (16 positions = 5 + 5 + 5 + 1).
    chunks = {"model.loss_chunk_len": 5, "model.positional": positional}
    _, single, m1 = one_step(tiny_config(arch, corpus, **mesh_config(1, 1, 1), **chunks))
    exp8, sharded, m8 = one_step(tiny_config(arch, corpus, **mesh_config(2, 2, 2), **chunks))
    assert dict(exp8.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    np.testing.assert_allclose(m8["loss_sum"] / m8["weight_sum"], m1["loss_sum"] / m1["weight_sum"], atol=1e-5)
    for a, b in zip(
        jax.tree.leaves(jax.device_get(single.params)), jax.tree.leaves(jax.device_get(sharded.params)), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)
    kernel = sharded.params["h_0"]["mlp"]["c_fc"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1] // 2), "really sharded"
    mu = sharded.opt_state[1][0].mu["h_0"]["mlp"]["c_fc"]["kernel"]
    assert mu.sharding.spec == P("fsdp", "tensor"), "optimizer moments follow their parameter"


@pytest.mark.parametrize("arch", ARCHS)
def test_fsdp_step_moves_weights_not_activations(tmp_path, arch):
    """Fully sharded data parallel gathers each weight and reduces each gradient; activations stay put.

    Without the activation constraints (``sharding.constrain``) XLA split the
    activations' width like the weights' and moved 28x the parameters' bytes
    per step here (23 MB for 0.83 MB of decoder-only parameters); now 2x.
    """
    config = tiny_config(arch, write_corpus(tmp_path), **mesh_config(1, 8, 1))
    config.model.num_layers, config.model.emb_dim = 1, 128
    config.data.seq_len, config.batch_size = 32, 64  # an activation (1 MB) outweighs the weights (0.8 MB)
    exp = Experiment(config)
    batch = exp.place(next(exp.data.train_iterator()))
    moved = collective_bytes(exp.train_step.lower(exp.init_state(), batch).compile().as_text())
    param_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(exp.abstract_state.params))
    assert moved["all-gather"] + moved["reduce-scatter"] + moved["all-reduce"] > param_bytes, moved
    assert sum(moved.values()) < 2.5 * param_bytes, f"{dict(moved)} for {param_bytes} bytes of parameters"


@pytest.mark.parametrize("arch", ["decoder_only", "encoder_decoder"])
def test_tensor_parallel_attention_projections_move_no_weights(tmp_path, arch):
    """Over ``tensor`` each device projects its own heads' queries, keys and values from its own kernel slices.

    With GPT-2's ``[D, 3D]`` kernel split along its ``3D`` axis, device 0 held
    the queries and half the keys: every step moved kernel slices forward and
    their gradients backward (collective-permutes of 12.7 kB here, of a 58 kB
    model).  The ``[D, 3, D]`` kernel splits each part alike; what ``tensor``
    still exchanges is activations (all-reduces of the row-parallel outputs and
    of the column-parallel input gradients).
    """
    config = tiny_config(arch, write_corpus(tmp_path), **mesh_config(1, 1, 2))
    config.model.num_layers, config.model.pad_vocab_to = 1, 2
    exp = Experiment(config)
    assert exp.state_shardings.params["h_0"]["attn"]["c_attn"]["kernel"].spec == P("fsdp", None, "tensor")
    hlo = exp.train_step.lower(exp.init_state(), exp.place(next(exp.data.train_iterator()))).compile().as_text()
    moved_weights = [
        line.strip()
        for line in hlo.splitlines()
        if re.search(r" (all-gather|all-to-all|collective-permute)\(", line) and "_attn" in line
    ]
    assert moved_weights == [], moved_weights
    assert collective_bytes(hlo)["all-reduce"] > 0, "tensor parallelism still reduces the partial sums"


@pytest.mark.parametrize("mesh", [(8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2)])
def test_fused_loss_moves_no_weight_gradient_inside_its_loop(tmp_path, mesh):
    """The fused loss's embedding gradient is summed over the row shards after its loop, not after every chunk.

    Accumulated in one ``[V, D]`` carry it was all-reduced after every chunk
    (GPT-2 124M, 8 chunks: 8 x 154 MB per step instead of once).  With the
    vocabulary split over ``tensor`` (byte tokenizer: 261 tokens, padded to 262) the loop
    exchanges only per-token values (Megatron's vocabulary-parallel
    cross-entropy: maxima, sums, partial input gradients).
    """
    overrides = {"model.loss_chunk_len": 4, "model.loss_impl": "fused"}
    config = tiny_config("decoder_only", write_corpus(tmp_path), **mesh_config(*mesh), **overrides)
    config.model.num_layers, config.data.tokenizer = 1, "byte"
    config.model.pad_vocab_to = 2  # 261 tokens, 262 rows: tensor=2 splits the vocabulary
    exp = Experiment(config)
    batch = exp.place(next(exp.data.train_iterator()))
    hlo = exp.train_step.lower(exp.init_state(), batch).compile().as_text()
    assert "Transformer.loss)/while/body" in hlo, "the loss runs as a loop over its 4 chunks"
    assert collective_bytes(hlo)["all-reduce"] > 0, "the gradients are still reduced, after the loop"
    in_loop = loop_collectives(hlo)
    if mesh[2] == 1:
        assert in_loop == []
    else:
        embedding_shard_bytes = 262 * config.model.emb_dim * 4 // mesh[2]
        assert in_loop and sum(collective_bytes("\n".join(in_loop)).values()) < embedding_shard_bytes / 4, in_loop


def test_a_vocabulary_that_tensor_cannot_split_gets_a_warning_naming_the_fix(tmp_path, caplog):
    corpus = write_corpus(tmp_path)
    config = tiny_config("decoder_only", corpus, **mesh_config(1, 1, 2), **{"data.tokenizer": "byte"})  # 261 tokens
    with caplog.at_level(logging.WARNING, logger="gpt2_jax.experiment"):
        Experiment(config)
    assert "set config.model.pad_vocab_to=2" in caplog.text
    caplog.clear()
    config.model.pad_vocab_to = 2
    with caplog.at_level(logging.WARNING, logger="gpt2_jax.experiment"):
        Experiment(config)
    assert "pad_vocab_to" not in caplog.text


def test_activation_constraints_apply_only_on_a_multi_device_mesh():
    def specs(fn, x):
        eqns = jax.make_jaxpr(fn)(x).eqns
        return [e.params["sharding"].spec for e in eqns if e.primitive.name == "sharding_constraint"]

    def rows_and_heads(x_BxLxN):
        return sharding.constrain(x_BxLxN, "batch", None, "heads")

    x = np.zeros((8, 3, 6), np.float32)  # heads: 6 is not divisible by tensor=4

    def on(data, fsdp, tensor):
        mesh = sharding.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor})
        return sharding.traced_on(mesh, rows_and_heads)

    assert specs(on(2, 2, 2), x) == [P(("data", "fsdp"), None, "tensor")]
    assert specs(on(2, 1, 4), x) == [P(("data", "fsdp"), None, P.UNCONSTRAINED)]
    assert specs(on(1, 1, 1), x) == [] and specs(rows_and_heads, x) == []


def test_partition_rules():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding.param_spec(("h_0", "attn", "c_attn", "kernel"), (32, 3, 32), mesh) == P("fsdp", None, "tensor")
    assert sharding.param_spec(("h_0", "attn", "c_attn", "bias"), (3, 32), mesh) == P(None, "tensor")
    assert sharding.param_spec(("h_0", "attn", "c_proj", "kernel"), (32, 32), mesh) == P("tensor", "fsdp")
    assert sharding.param_spec(("h_0", "crossattention", "q_attn", "kernel"), (32, 32), mesh) == P("fsdp", "tensor")
    assert sharding.param_spec(("h_0", "mlp", "c_fc", "bias"), (128,), mesh) == P("tensor")
    assert sharding.param_spec(("h_0", "ln_1", "scale"), (32,), mesh) == P()
    assert sharding.param_spec(("wte", "embedding"), (70, 32), mesh) == P("tensor", "fsdp")
    assert sharding.param_spec(("wte", "embedding"), (71, 32), mesh) == P(None, "fsdp"), "odd vocab: replicated rows"
    assert sharding.param_spec(("wpe", "embedding"), (64, 32), mesh) == P(None, "fsdp")


def test_mesh_sizes_resolve_and_fail_clearly():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
    with pytest.raises(ConfigError, match="at most one axis may be -1"):
        sharding.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
    with pytest.raises(ConfigError, match="not divisible by 3"):
        sharding.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)


def test_checkpoint_saved_on_eight_devices_restores_on_two_and_one(tmp_path):
    corpus = write_corpus(tmp_path)
    exp8, state8, _ = one_step(tiny_config("encoder_decoder", corpus, **mesh_config(2, 2, 2)))
    ckpt = checkpointing.Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, state8, {"signature": exp8.signature})
    ckpt.close()
    want = jax.device_get(state8.params)
    for mesh in ({"data": 2, "fsdp": 1, "tensor": 1}, {"data": 1, "fsdp": 1, "tensor": 1}):
        overrides = {"model.num_layers": 1, **{f"mesh.{k}": v for k, v in mesh.items()}}
        exp = Experiment(tiny_config("encoder_decoder", corpus, **overrides))
        abstract = checkpointing.abstract_with_shardings(exp.abstract_state, exp.state_shardings)
        reader = checkpointing.Checkpointer(tmp_path / "ckpt")
        restored, _, step = reader.restore(abstract, exp.signature)
        reader.close()
        assert step == 1
        leaf = restored.params["h_0"]["attn"]["c_proj"]["kernel"]
        assert len(leaf.sharding.device_set) == mesh["data"]
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(jax.device_get(restored.params)), strict=True):
            np.testing.assert_array_equal(a, b)


def test_sharded_training_run_writes_results(tmp_path):
    config = tiny_config("prefix_lm", write_corpus(tmp_path), **mesh_config(-1, 2, 1))
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["steps"] == config.num_train_steps and np.isfinite(results["final_eval_loss"])


def _free_slurm_job_id() -> int:
    """A job id whose coordinator port (JAX derives it from SLURM_JOB_ID) is free on the local host."""
    for job in random.sample(range(4096), 64):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 61440 + job))
            except OSError:
                continue
            return job
    raise RuntimeError("no free port in 61440-65535 for the coordinator")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The flags launcher runs the same two-process training as SLURM's, set up by hand: in the slow suite.
@pytest.mark.parametrize("launcher", ["slurm", pytest.param("flags", marks=pytest.mark.slow)])
def test_two_processes_train_like_one_process_over_the_same_mesh(tmp_path, launcher):
    """The README's multi-host commands, as two processes on the local host.

    Each process has 2 CPU devices and feeds its half of every global batch.
    Under a (simulated) SLURM step ``jax.distributed.initialize()`` finds the
    coordinator, the process count and the rank in SLURM's variables; on bare
    machines they are config fields.  The run must equal one process driving
    the same (data=2, fsdp=2) mesh over 4 devices, and the SLURM run's
    checkpoint must resume in one process.
    """
    corpus = write_corpus(tmp_path)
    fields = {
        "data.corpus": corpus,
        "model.num_layers": 1,
        "model.emb_dim": 32,
        "data.seq_len": 16,
        "batch_size": 8,
        "num_train_steps": 6,
        "eval_every_steps": 3,
        "checkpoint_every_steps": 3,
        "optimizer.warmup_steps": 2,
        "mesh.data": 2,
        "mesh.fsdp": 2,
    }

    def command(workdir, **extra):
        args = [f"--config.{k}={v}" for k, v in {**fields, **extra}.items()]
        return [sys.executable, "-m", "gpt2_jax.main", "--config=configs/default.py", f"--workdir={workdir}", *args]

    def env(devices: int, **extra) -> dict:
        flags = os.environ["XLA_FLAGS"].replace("device_count=8", f"device_count={devices}")
        return dict(os.environ, XLA_FLAGS=flags, **extra)

    single = subprocess.run(command(tmp_path / "one"), cwd=REPO, env=env(4), capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    job = _free_slurm_job_id() if launcher == "slurm" else None
    address = f"127.0.0.1:{_free_port() if job is None else 61440 + job}"  # JAX derives SLURM's port from the job
    bind = {"JAX_COORDINATOR_BIND_ADDRESS": address}  # IPv4 only: JAX's default binds [::]

    def launch(rank: int) -> subprocess.Popen:
        if launcher == "slurm":  # what srun sets for each task
            args = command(tmp_path / "two", distributed=True)
            extra = {"SLURM_JOB_ID": str(job), "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2"}
            extra.update(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank))
        else:
            coordinator = {"coordinator_address": address, "num_processes": 2, "process_id": rank}
            args, extra = command(tmp_path / "two", distributed=True, **coordinator), {}
        return subprocess.Popen(
            args, cwd=REPO, env=env(2, **bind, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    procs = [launch(rank) for rank in (0, 1)]
    logs = [p.communicate(timeout=300) for p in procs]
    for rank, (p, (_, err)) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, err[-3000:]
        assert f"process {rank} of 2: mesh {{'data': 2, 'fsdp': 2, 'tensor': 1}} over 4 devices (2 here)" in err
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert (two["steps"], two["tokens_seen"]) == (one["steps"], one["tokens_seen"]) == (6, 6 * 8 * 16)
    np.testing.assert_allclose(two["final_eval_loss"], one["final_eval_loss"], rtol=1e-6)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["3", "6"]
    if launcher != "slurm":
        return

    # The two processes' checkpoint resumes in one process, and goes on as the one-process run does.
    for run in ("one", "two"):
        more = subprocess.run(
            command(tmp_path / run, num_train_steps=9), cwd=REPO, env=env(4), capture_output=True, text=True
        )
        assert more.returncode == 0 and "resumed from step 6" in more.stderr, more.stderr[-3000:]
    one, two = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two"))
    assert two["steps"] == one["steps"] == 9
    np.testing.assert_allclose(two["final_eval_loss"], one["final_eval_loss"], rtol=1e-6)


def test_two_processes_sample_and_evaluate_a_run_like_one_process(tmp_path):
    """``sample`` and ``evaluate`` with ``--distributed``: two processes of 2 CPU devices each, one (2, 2, 1) mesh.

    Each process decodes its rows and process 0 prints everything: the same
    text and the same language-model loss as one process on that mesh.
    """
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config(corpus=write_corpus(tmp_path), **{"data.seq_len": 32}), workdir)
    run = runs.load(workdir, runs.parse_mesh("2,2,1"))  # this process: 4 of its 8 devices
    prompts = ["First", "All:", "Speak", "You are"]  # 4 rows: split over data x fsdp
    want = complete(run, prompts, 12, temperature=0.0)
    want_loss = evaluate.language_model_scores(run, "validation")["loss"]

    def two_processes(module: str, *args: str) -> list[str]:
        address = f"127.0.0.1:{_free_port()}"
        flags = os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=2")
        env = dict(os.environ, XLA_FLAGS=flags, JAX_COORDINATOR_BIND_ADDRESS=address)
        common = [f"--workdir={workdir}", "--mesh=2,2,1", "--distributed", f"--coordinator_address={address}"]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", module, *common, "--num_processes=2", f"--process_id={rank}", *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for rank in (0, 1)
        ]
        outputs = [p.communicate(timeout=300) for p in procs]
        for p, (_, err) in zip(procs, outputs, strict=True):
            assert p.returncode == 0, err[-3000:]
        return [out for out, _ in outputs]

    def in_order(lines: list[str], printed: str) -> bool:
        """``lines`` appear in ``printed`` in this order (Gloo, the CPU collectives, prints its connections to
        stdout from threads, in fragments that may fall between our lines)."""
        rest = iter(printed.splitlines())
        return all(any(line == seen for seen in rest) for line in lines)

    sample_flags = [f"--prompt={p}" for p in prompts] + ["--temperature=0", "--max_new_tokens=12"]
    printed = two_processes("gpt2_jax.sample", *sample_flags)
    expected = [line for p, text in zip(prompts, want, strict=True) for line in (f"--- {p!r}", *text.splitlines())]
    assert in_order(expected, printed[0]), printed[0]
    assert "--- " not in printed[1], "only process 0 prints"
    scores = workdir / "eval_validation" / "scores.json"
    scores.unlink()  # written by this process's evaluation above
    printed = two_processes("gpt2_jax.evaluate")
    assert json.loads(scores.read_text())["loss"] == pytest.approx(want_loss, rel=1e-6)
    assert '"loss"' in printed[0] and '"loss"' not in printed[1], "only process 0 prints"
