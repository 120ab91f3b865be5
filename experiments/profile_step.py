"""Where a train step spends its time: a ``jax.profiler`` trace, summed per operation.

``python -m experiments.profile_step`` builds the benchmark's train step (see
:mod:`experiments.bench`; same flags for shape, batch, dtype, architecture and
attention: ``--shape``, ``--batch``, ``--dtype``, ``--steps``), traces a few steps with ``jax.profiler`` and prints

* the step time,
* time per category: dense matmuls, attention, the output layer and loss,
  LayerNorm, MLP activation, optimizer, other -- forward and backward apart,
* the most expensive XLA operations with the JAX source operation they come from.

Operations are named by the compiled module's HLO (``op_name`` metadata); on
GPUs each kernel is attributed to its HLO operation.  On the CPU XLA runs
independent operations concurrently and the weight-gradient matmuls
asynchronously, so per-operation times overlap and share cores: the
categories say roughly where the time goes (closest on one core, ``taskset
-c 0``); compare step times, not operation times, to judge a change.
The trace itself is kept in ``--trace_dir`` for TensorBoard/Perfetto, with the
compiled step's HLO (``compiled_hlo.txt``) to read which operations XLA fused.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import shutil
import time

import jax
from absl import app, flags

from experiments import bench

_ARCH = flags.DEFINE_string(
    "arch", "decoder_only", "Runner spec, as bench.py's --archs: `arch[:impl][@field=value...]`."
)
_TOP = flags.DEFINE_integer("top", 25, "Operations listed.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", "/tmp/gpt2_jax_profile", "Where the trace is written (replaced).")

_SKIP = ("$", "Thunk", "Slinky", "Pjit", "Threadpool")


def categorize(hlo_op: str, op_name: str) -> str:
    """A coarse category of an HLO operation from its JAX ``op_name`` (``jit(f)/jvp(Transformer)/h_0/mlp/c_fc/...``)."""
    phase = "bwd" if "transpose(" in op_name else "fwd"
    # Weight-gradient matmuls carry a "transpose" op_name; GPUs run matmuls as cuBLAS custom calls.
    is_matmul = "dot_general" in op_name or hlo_op.startswith(("dot", "custom-call", "cublas", "gemm"))
    if re.search(r"/(attn|crossattention)/(?!c_attn|c_proj|q_attn)", op_name):
        kind = "attention"
    elif "_head" in op_name or re.search(r"Transformer\.loss\)?/(?!Transformer\.features)", op_name):
        # The fused output layer + loss runs in Transformer.loss outside the stack
        # (its gradient matmuls too, in the forward pass).
        kind = "output layer + loss"
    elif is_matmul:
        kind = "dense matmuls"
    elif "/ln_" in op_name:
        kind = "layernorm"
    elif "/mlp/" in op_name:
        kind = "mlp activation"
    elif "Transformer" in op_name:
        kind = "other model"
    else:
        return "optimizer + step"
    return f"{kind} ({phase})"


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX ``op_name`` it was generated from.

    Control flow (``while``, ``conditional``, ``call``) is left out: the CPU
    trace times such an instruction from start to end, over the operations of
    its body, which are counted themselves (the fused loss's ``scan`` would
    count twice).
    """
    out = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?)op_name=\"([^\"]*)\"", hlo_text, re.M):
        if not re.search(r" (?:while|conditional|call)\(", m.group(2)):
            out.setdefault(m.group(1), m.group(3))
    return out


def device_pids(events: list[dict]) -> set[int]:
    """Processes of an accelerator's streams (``/device:GPU:0``); empty on the CPU."""
    return {
        e["pid"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name" and "/device:" in e.get("args", {}).get("name", "")
    }


def summarize(events: list[dict], names: dict[str, str], steps: int) -> tuple[collections.Counter, collections.Counter]:
    """Milliseconds per step by HLO operation and by category.

    On accelerators only the device streams' kernels count, each attributed
    to its HLO operation (``args.hlo_op``, else the kernel's name); kernels of
    no known operation are listed under their own name as "unattributed".
    On the CPU an event is named after its HLO operation, and asynchronous
    matmuls are timed from their start to their ``end:`` event.
    """
    devices = device_pids(events)
    per_op: collections.Counter = collections.Counter()
    open_async: dict[str, float] = {}
    for e in sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"]):
        name = e["name"]
        if devices:
            if e["pid"] in devices:
                per_op[e.get("args", {}).get("hlo_op", name)] += e["dur"]
            continue
        if name.startswith("end: "):
            start = open_async.pop(name[5:], None)
            if start is not None:
                per_op[name[5:]] += e["ts"] - start
            continue
        if name.startswith(_SKIP) or name not in names:
            continue
        if name.startswith("dot.") and e["dur"] < 1000:  # an asynchronous CPU matmul: timed to its end event
            open_async[name] = e["ts"]
            continue
        per_op[name] += e["dur"]
    per_op = collections.Counter({k: v / 1000 / steps for k, v in per_op.items()})
    per_category: collections.Counter = collections.Counter()
    for op, ms in per_op.items():
        per_category[categorize(op, names[op]) if op in names else "unattributed"] += ms
    return per_op, per_category


def profile(runner: bench.Runner, steps: int, trace_dir: str) -> tuple[float, list[dict]]:
    """Trace ``steps`` steps of a benchmark runner: (ms per step, the trace's events).

    The compiled step's HLO is written next to the trace (``compiled_hlo.txt``).
    """
    for _ in range(2):
        runner.step()
    shutil.rmtree(trace_dir, ignore_errors=True)
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    t0 = time.perf_counter()
    for _ in range(steps):  # back to back, as the benchmark and the training loop run them
        runner.dispatch()
    runner.sync()
    step_ms = (time.perf_counter() - t0) / steps * 1000
    jax.profiler.stop_trace()
    with open(f"{trace_dir}/compiled_hlo.txt", "w") as f:
        f.write(runner.hlo_text)
    trace = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
    with gzip.open(trace) as f:
        return step_ms, json.load(f)["traceEvents"]


def main(argv: list[str]) -> None:
    del argv
    shape = bench.SHAPES[bench._SHAPE.value]
    if bench._BATCH.value:
        shape = bench.dataclasses.replace(shape, batch=bench._BATCH.value)
    arch, impl, overrides = bench.parse_runner(_ARCH.value, "cudnn" if jax.default_backend() == "gpu" else "xla")
    runner = bench.ours(arch, shape, bench._DTYPE.value, impl, overrides, bench._XLA_OPTIONS.value)
    step_ms, events = profile(runner, bench._STEPS.value, _TRACE_DIR.value)
    names = op_names(runner.hlo_text)
    per_op, per_category = summarize(events, names, bench._STEPS.value)
    print(f"{runner.name}, {shape}: {step_ms:.1f} ms per traced step, {sum(per_op.values()):.1f} ms of operations")
    print(f"\n{'category':32s} {'ms/step':>8s}")
    for category, ms in per_category.most_common():
        print(f"{category:32s} {ms:8.1f}")
    print(f"\n{'ms/step':>8s}  {'HLO op':28s} JAX op")
    for op, ms in per_op.most_common(_TOP.value):
        print(f"{ms:8.2f}  {op[:28]:28s} {names.get(op, '(unattributed kernel)')[-90:]}")


if __name__ == "__main__":
    app.run(main)
