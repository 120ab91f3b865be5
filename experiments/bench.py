"""Training throughput and MFU of every architecture, measured side by side with a PyTorch peer.

``make bench`` (``python -m experiments.bench``) prints, for each architecture at
a fixed shape (6 layers, width 384, 6 heads, context 256, batch 8, vocabulary
8192; GPT-2 124M with ``--shape=gpt2_124m`` on accelerators):

* steady-state training tokens/s and step time (median over interleaved rounds)
  and the spread of the rounds (how far noise moved them),
* compile time, XLA's peak-memory estimate of the compiled step,
* model FLOP utilisation: model FLOPs (``6N + 12 L d T`` per token, see
  :mod:`gpt2_jax.flops`) per second over the peak -- on CPU a matmul peak
  measured in the same run, on GPU/TPU the datasheet peaks of ``gpt2_jax.flops.DEVICE_PEAKS``;
* Hugging Face ``transformers``' GPT2LMHeadModel (PyTorch; eager and under
  ``torch.compile``) at the same shape, interleaved with ours, and the ratio;
* how decoder-only tokens/s and memory change from context 128 to 1024 at a
  constant number of tokens per batch.

Machines are noisy: every runner is timed in rounds that alternate between the
runners, and medians are reported.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import default
from gpt2_jax import attention, flops, optim, steps, validation
from gpt2_jax.model import Transformer, TransformerConfig

# The decoder-only step with the three opt-in paths that pay on CPUs (docs/performance.md).
CPU_PATHS = "decoder_only:block_causal@loss_impl=fused@gelu_impl=recompute"
_ARCHS = flags.DEFINE_list(
    "archs",
    ["decoder_only", CPU_PATHS, "prefix_lm", "encoder_decoder"],
    "Runners of ours to time: `arch[:impl][@field=value...]`, e.g. decoder_only:xla or "
    "decoder_only:block_causal@loss_impl=fused@remat=true (attention implementation, model config fields).",
)
_ATTENTION = flags.DEFINE_enum(
    "attention_impl", "xla", list(attention.IMPLEMENTATIONS), "Default attention implementation."
)
_BATCH = flags.DEFINE_integer("batch", 0, "Batch size (0 = the shape's).")
_SHAPE = flags.DEFINE_enum("shape", "small", ["small", "gpt2_124m"], "small: 6x384, ctx 256, batch 8; or GPT-2 124M.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per runner per round.")
_PEER = flags.DEFINE_bool("peer", True, "Also time transformers' GPT2LMHeadModel (needs the bench extra).")
_COMPILE_PEER = flags.DEFINE_bool("compile_peer", True, "Also time the peer under torch.compile.")
_CONTEXTS = flags.DEFINE_list("contexts", ["128", "256", "512", "1024"], "Context sweep (decoder-only); empty = skip.")
_XLA_OPTIONS = flags.DEFINE_string(
    "xla_options", "", "XLA options of our compiled steps, as config.xla_options ('name=value,...')."
)


@dataclasses.dataclass(frozen=True)
class Shape:
    layers: int
    width: int
    heads: int
    context: int
    batch: int
    vocab: int


SHAPES = {"small": Shape(6, 384, 6, 256, 8, 8192), "gpt2_124m": Shape(12, 768, 12, 1024, 8, 50304)}


def measure_matmul_peak(dtype: str = "float32", sizes: tuple[int, ...] = (1024, 2048), seconds: float = 1.0) -> float:
    """Best FLOP/s of a jitted square matmul on random data (on CPU, the practical peak MFU is taken against)."""
    best = 0.0
    for n in sizes:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
        f = jax.jit(lambda a, b: a @ b)
        f(a, a).block_until_ready()
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            f(a, a).block_until_ready()
            times.append(time.perf_counter() - t0)
        best = max(best, 2 * n**3 / statistics.median(times))
    return best


def device_peak(dtype: str) -> tuple[float, str]:
    """(peak FLOP/s, how it was obtained) for the default device."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return measure_matmul_peak(), "matmul peak measured in this run"
    measured = measure_matmul_peak(dtype, sizes=(4096, 8192))
    print(f"{device.device_kind}: {dtype} 8192^3 matmul measured at {measured / 1e12:.0f} TFLOP/s")
    peak = flops.datasheet_peak(device, dtype)
    if peak is None:
        return float("nan"), f"unknown peak for {device.device_kind}"
    return peak, f"{device.device_kind} {dtype} datasheet peak"


@dataclasses.dataclass
class Runner:
    """A training step to time, with its work per step.

    ``dispatch`` starts one step without waiting for it (JAX and CUDA queue
    the work), ``sync`` waits for every step started so far.
    """

    name: str
    dispatch: Callable[[], None]
    sync: Callable[[], None]
    tokens_per_step: int
    flops_per_step: float
    compile_s: float = float("nan")
    memory_bytes: float = float("nan")
    times: list[float] = dataclasses.field(default_factory=list)
    hlo_text: str = ""  # the compiled step's optimized HLO (ours only), for experiments.profile_step

    def step(self) -> None:
        """One whole step."""
        self.dispatch()
        self.sync()

    def median(self) -> float:
        return statistics.median(self.times)

    def spread(self) -> float:
        """(slowest - fastest round) / median step time: how far the host's noise moved the rounds."""
        return (max(self.times) - min(self.times)) / self.median()


def _parse_value(text: str, like):
    """``text`` as a value of ``like``'s type (a config field's current value)."""
    if isinstance(like, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() == "true"
    return type(like)(text)


def _bench_config(arch: str, shape: Shape, dtype: str, impl: str, overrides: dict[str, str] | None = None):
    config = default.get_config()
    config.model.arch = arch
    config.model.attention_impl = impl
    config.model.num_layers = shape.layers
    config.model.num_heads = shape.heads
    config.model.emb_dim = shape.width
    config.model.dtype = dtype
    config.optimizer.warmup_steps = 10
    for field, text in (overrides or {}).items():  # last: a runner's own settings win
        if field not in config.model:
            raise ValueError(f"unknown model config field {field!r} in a runner spec (see configs/default.py)")
        config.model[field] = _parse_value(text, config.model[field])
    return config


def ours(
    arch: str,
    shape: Shape,
    dtype: str = "float32",
    impl: str = "xla",
    overrides: dict[str, str] | None = None,
    xla_options: str = "",
) -> Runner:
    """Our jitted train step on random tokens of the given shape (an encoder-decoder splits the context in half).

    ``overrides`` sets model config fields (``{"remat": "true"}``); ``xla_options`` are
    the step's compile options, as ``config.xla_options``.
    """
    config = _bench_config(arch, shape, dtype, impl, overrides)
    T = shape.context
    dec_len, enc_len = (T // 2, T // 2) if arch == "encoder_decoder" else (T, 0)
    cfg = dataclasses.replace(
        TransformerConfig.from_config(config.model.to_dict()),
        vocab_size=shape.vocab,
        max_len=T,
    )
    model = Transformer(cfg)
    rng = np.random.default_rng(0)
    B = shape.batch
    batch = {
        "input_tokens": rng.integers(0, shape.vocab, (B, dec_len)).astype(np.int32),
        "target_tokens": rng.integers(0, shape.vocab, (B, dec_len)).astype(np.int32),
        "loss_weights": np.ones((B, dec_len), np.float32),
        "positions": np.broadcast_to(np.arange(dec_len, dtype=np.int32), (B, dec_len)).copy(),
    }
    if arch == "prefix_lm":
        batch["bidirectional"] = (np.arange(T)[None] < T // 2).repeat(B, 0).astype(np.int32)
    if arch == "encoder_decoder":
        batch["encoder_input_tokens"] = rng.integers(0, shape.vocab, (B, enc_len)).astype(np.int32)
        batch["encoder_positions"] = batch["positions"][:, :enc_len].copy()
        batch["encoder_segment_ids"] = np.ones((B, enc_len), np.int32)
    params = jax.jit(lambda k: model.init(k, {k2: v[:1] for k2, v in batch.items()})["params"])(jax.random.PRNGKey(0))
    tx = optim.make(config.optimizer, 1000, params)
    state = steps.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(1),
        nonfinite_steps=jnp.zeros((), jnp.int32),
    )
    step_fn = jax.jit(
        lambda s, b: steps.train_step(s, b, model=model, tx=tx, accum_steps=1),
        donate_argnums=0,
        compiler_options=validation.xla_options(xla_options, check_names=True),
    )
    device_batch = jax.device_put(batch)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, device_batch).compile()
    compile_s = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    peak = float("nan")
    if memory is not None:
        peak = memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
        peak -= memory.alias_size_in_bytes
    holder = {"state": state}

    def dispatch() -> None:
        holder["state"], holder["metrics"] = compiled(holder["state"], device_batch)

    def sync() -> None:
        jax.block_until_ready(holder["metrics"]["loss_sum"])

    dispatch()  # warm up (allocations, thread pools)
    sync()
    model_flops = flops.train_flops(cfg, dec_len, enc_len) * B
    name = " ".join([f"ours {arch}" if impl == "xla" else f"ours {arch} [{impl}]", *runner_overrides(overrides)])
    return Runner(name, dispatch, sync, B * T, model_flops, compile_s, peak, hlo_text=compiled.as_text())


def peer(shape: Shape, compiled: bool, dtype: str = "float32") -> Runner:
    """transformers' GPT2LMHeadModel + torch AdamW at the same shape: on the CPU, or on the GPU JAX uses.

    On a GPU, ``bfloat16`` runs the step under ``torch.autocast`` (fp32 master
    weights, as ours) with PyTorch's fused SDPA attention.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    on_gpu = jax.devices()[0].platform == "gpu"
    device = torch.device("cuda" if on_gpu else "cpu")
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=shape.vocab,
        n_positions=shape.context,
        n_embd=shape.width,
        n_layer=shape.layers,
        n_head=shape.heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.context), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def train_step():
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    compiled_step = torch.compile(train_step) if compiled else train_step

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    compiled_step()
    sync()
    compile_s = time.perf_counter() - t0
    compiled_step()  # warm up (the optimizer's state is created on the first step)
    sync()
    ours_cfg = TransformerConfig(
        vocab_size=shape.vocab,
        num_layers=shape.layers,
        num_heads=shape.heads,
        emb_dim=shape.width,
        mlp_dim=4 * shape.width,
        max_len=shape.context,
    )
    model_flops = flops.train_flops(ours_cfg, shape.context) * shape.batch
    name = "transformers GPT-2 (torch.compile)" if compiled else "transformers GPT-2 (eager)"
    memory = torch.cuda.max_memory_allocated() if on_gpu else float("nan")
    return Runner(name, compiled_step, sync, shape.batch * shape.context, model_flops, compile_s, memory)


def interleave(runners: list[Runner], rounds: int, steps: int) -> None:
    """Time ``steps`` consecutive steps of every runner per round, alternating runners each round.

    The steps of a round are started back to back and waited for once, as the
    training loop runs them (it reads each step's non-finite flag one step
    late): the host queues step n + 1 while the device runs step n.  Each round
    adds one time per step (the round's mean).
    """
    for r in range(rounds):
        order = runners if r % 2 == 0 else runners[::-1]
        for runner in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                runner.dispatch()
            runner.sync()
            runner.times.append((time.perf_counter() - t0) / steps)


def report(runners: list[Runner], peak: float, peak_source: str) -> None:
    print(f"\npeak: {peak / 1e9:.1f} GFLOP/s ({peak_source})")
    width = max([42] + [len(r.name) for r in runners])
    header = (
        f"{'runner':{width}s} {'tokens/s':>9s} {'step ms':>8s} {'spread':>7s} {'compile s':>9s} {'peak MB':>8s} "
        f"{'MFU':>6s}"
    )
    print(header)
    print("-" * len(header))
    for r in runners:
        t = r.median()
        print(
            f"{r.name:{width}s} {r.tokens_per_step / t:9.0f} {1000 * t:8.1f} {r.spread():7.0%} {r.compile_s:9.1f} "
            f"{r.memory_bytes / 2**20:8.0f} {r.flops_per_step / t / peak:6.1%}"
        )
    print("(spread: slowest minus fastest round over the median; figures whose difference is within it are noise)")


def parse_runner(spec: str, default_impl: str) -> tuple[str, str, dict[str, str]]:
    """``"decoder_only:cudnn@loss_chunk_len=0"`` -> (arch, attention implementation, model field overrides)."""
    head, *settings = spec.split("@")
    arch, _, impl = head.partition(":")
    overrides = {}
    for setting in settings:
        field, sep, value = setting.partition("=")
        if not sep:
            raise ValueError(f"runner spec {spec!r}: expected @field=value, got @{setting}")
        overrides[field] = value
    return arch, impl or default_impl, overrides


def runner_overrides(overrides: dict[str, str] | None) -> list[str]:
    return [f"{field}={value}" for field, value in (overrides or {}).items()]


def main(argv: list[str]) -> None:
    del argv
    shape = SHAPES[_SHAPE.value]
    if _BATCH.value:
        shape = dataclasses.replace(shape, batch=_BATCH.value)
    on_cpu = jax.devices()[0].platform == "cpu"
    if on_cpu and _PEER.value:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)  # the same cores XLA's thread pool uses
    peak, source = device_peak(_DTYPE.value)
    specs = [parse_runner(spec, _ATTENTION.value) for spec in _ARCHS.value]
    runners = [ours(arch, shape, _DTYPE.value, impl, overrides, _XLA_OPTIONS.value) for arch, impl, overrides in specs]
    peers = []
    if _PEER.value:
        peers.append(peer(shape, compiled=False, dtype=_DTYPE.value))
        if _COMPILE_PEER.value:
            peers.append(peer(shape, compiled=True, dtype=_DTYPE.value))
    interleave(runners + peers, _ROUNDS.value, _STEPS.value)
    sweep = []
    if _CONTEXTS.value:
        tokens = shape.context * shape.batch
        for ctx in (int(c) for c in _CONTEXTS.value):
            s = dataclasses.replace(shape, context=ctx, batch=max(1, tokens // ctx))
            runner = ours("decoder_only", s, _DTYPE.value, _ATTENTION.value, xla_options=_XLA_OPTIONS.value)
            runner.name = f"decoder_only context {ctx} x batch {s.batch}"
            sweep.append(runner)
        interleave(sweep, _ROUNDS.value, _STEPS.value)
    if on_cpu:
        # A noisy moment during one measurement would understate the peak (and
        # overstate MFU): measure it again after the timed rounds, keep the best.
        peak = max(peak, measure_matmul_peak())
    if _XLA_OPTIONS.value:
        print(f"\nours compiled with XLA options {_XLA_OPTIONS.value}")
    report(runners + peers, peak, source)
    decoder_only = [r for r, (arch, _, _) in zip(runners, specs, strict=True) if arch == "decoder_only"]
    if peers and decoder_only:
        best_peer = max(peers, key=lambda r: r.tokens_per_step / r.median())
        mine = max(decoder_only, key=lambda r: r.tokens_per_step / r.median())
        ratio = (mine.tokens_per_step / mine.median()) / (best_peer.tokens_per_step / best_peer.median())
        print(f"\n{mine.name} / {best_peer.name}: {ratio:.2f}x tokens/s")
    if decoder_only:
        base = decoder_only[0]
        for r in runners:
            if r is not base:
                # Achieved model FLOP/s relative to the decoder-only model's: 1.0 = FLOP-proportional throughput.
                rel = (r.flops_per_step / r.median()) / (base.flops_per_step / base.median())
                print(f"{r.name}: {rel:.2f} of {base.name}'s FLOP/s")
    if sweep:
        report(sweep, peak, source)
        ref = next((r for r in sweep if r.name.endswith(f"context {shape.context} x batch {shape.batch}")), None)
        if ref is not None:
            for r in sweep:
                rel = (r.tokens_per_step / r.median()) / (ref.tokens_per_step / ref.median())
                print(f"{r.name}: {rel:.2f} of context-{shape.context} tokens/s")


if __name__ == "__main__":
    app.run(main)
