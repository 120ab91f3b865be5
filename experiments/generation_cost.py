"""What generation costs when its output keeps joining the context: ``python -m experiments.generation_cost``.

The setting of chat and streaming continuation: a context of ``C`` tokens,
then ``--turns`` turns of ``--turn_tokens`` generated tokens, each turn's
output joining the context before the next turn.  Each architecture does what
its masks require:

* decoder-only: the context is prefilled once; every new token is one cached
  step whose keys/values are appended to the cache;
* prefix-LM: every turn the context, now holding the last turn's output, is a
  new bidirectional prefix and is prefilled again; the turn's tokens are
  cached steps;
* encoder-decoder: every turn re-encodes the context as its source (and
  recomputes the cross-attention keys/values), then decodes the turn from
  ``<bos>``.

For contexts of 128 to 2048 tokens it times the whole conversation (greedy,
batch 1, compilation excluded, median of ``--conversations``) and counts its FLOPs
(:func:`gpt2_jax.flops.cached_flops`, :func:`gpt2_jax.flops.encode_flops`:
a token attends to the tokens in its context).  The implementation's cached
steps attend over the whole preallocated cache, masked, so their time grows
with the cache even where the FLOP count does not.  It prints a table of
generated tokens/s and FLOPs per generated token and, with ``--out``, writes
``report.md`` and ``generation_cost.png`` (both against context length).
Every stack has the same shape (the encoder-decoder has twice the layers).

About 5 minutes on two CPU cores with the defaults.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from experiments.report import pyplot
from gpt2_jax import decoding, flops
from gpt2_jax.model import Transformer, TransformerConfig

ARCHS = ("decoder_only", "prefix_lm", "encoder_decoder")
LABELS = {"decoder_only": "decoder-only", "prefix_lm": "prefix-LM", "encoder_decoder": "encoder-decoder"}

_CONTEXTS = flags.DEFINE_list(
    "context_lengths", ["128", "256", "512", "1024", "2048"], "Context lengths before the turns."
)
_TURNS = flags.DEFINE_integer("turns", 4, "Turns whose output joins the context.")
_TURN_TOKENS = flags.DEFINE_integer("turn_tokens", 32, "Tokens generated per turn.")
_REPEATS = flags.DEFINE_integer("conversations", 3, "Timed conversations per cell (median reported).")
_LAYERS = flags.DEFINE_integer("layers", 4, "Layers per stack.")
_WIDTH = flags.DEFINE_integer("width", 256, "Model width (heads of 64).")
_OUT = flags.DEFINE_string("out", "", "Directory for report.md and generation_cost.png (empty: print only).")


def model_config(arch: str, max_len: int, layers: int, width: int) -> TransformerConfig:
    return TransformerConfig(
        arch=arch,
        vocab_size=8192,
        num_layers=layers,
        num_encoder_layers=layers,
        num_heads=width // 64,
        emb_dim=width,
        mlp_dim=4 * width,
        max_len=max_len,
    )


def turn_flops(cfg: TransformerConfig, context: int, turn: int, turn_tokens: int) -> float:
    """FLOPs of turn ``turn`` (from 0) of ``turn_tokens`` tokens after ``context`` tokens, as :func:`converse` runs."""
    c = context + turn * turn_tokens
    if cfg.arch == "decoder_only":  # the context is prefilled once, before the first turn
        first = flops.cached_flops(cfg, context, context) if turn == 0 else 0.0
        return first + sum(flops.cached_flops(cfg, 1, c + j + 1) for j in range(turn_tokens))
    if cfg.arch == "prefix_lm":
        return flops.cached_flops(cfg, c, c) + sum(flops.cached_flops(cfg, 1, c + j + 1) for j in range(turn_tokens))
    return flops.encode_flops(cfg, c) + sum(
        flops.cached_flops(cfg, 1, j + 1, encoder_len=c) for j in range(turn_tokens)
    )


def conversation_flops(cfg: TransformerConfig, context: int, turns: int, turn_tokens: int) -> float:
    """FLOPs of ``turns`` turns of ``turn_tokens`` tokens after ``context`` tokens."""
    return sum(turn_flops(cfg, context, turn, turn_tokens) for turn in range(turns))


def converse(cfg: TransformerConfig, params, context_ids: np.ndarray, turns: int, turn_tokens: int) -> float:
    """Seconds for one conversation (compiled beforehand by a first call)."""
    model = Transformer(cfg)
    start = time.perf_counter()
    if cfg.arch == "decoder_only":
        out, _ = generate(params, decoding.pad_prompts([context_ids], 0), model, turns * turn_tokens)
        jax.block_until_ready(out)
        return time.perf_counter() - start
    ids = context_ids
    for _ in range(turns):
        if cfg.arch == "prefix_lm":
            inputs = decoding.pad_prompts([ids], 0)
        else:
            inputs = decoding.encoder_inputs([ids], 0, 1)
        out, _ = generate(params, inputs, model, turn_tokens)
        ids = np.concatenate([ids, np.asarray(out[0])])
    return time.perf_counter() - start


def generate(params, inputs: dict, model: Transformer, new_tokens: int):
    # eos_id=-1: never stop early, so every turn generates all its tokens.
    return decoding.generate(params, inputs, jax.random.PRNGKey(0), model=model, max_new_tokens=new_tokens, eos_id=-1)


def measure(arch: str, context: int, turns: int, turn_tokens: int, repeats: int, layers: int, width: int) -> dict:
    cfg = model_config(arch, context + turns * turn_tokens, layers, width)
    dummy = {"input_tokens": np.zeros((1, 8), np.int32), "positions": np.zeros((1, 8), np.int32)}
    if arch == "encoder_decoder":
        dummy |= decoding.encoder_inputs([np.ones(8, np.int32)], 0, 1)
        dummy.pop("bos_id")
    if arch == "prefix_lm":
        dummy["bidirectional"] = np.ones((1, 8), np.int32)
    params = jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(0), dummy)["params"]
    ids = np.random.default_rng(0).integers(8, cfg.vocab_size, context).astype(np.int32)
    converse(cfg, params, ids, turns, turn_tokens)  # compiles every shape of the conversation
    seconds = statistics.median(converse(cfg, params, ids, turns, turn_tokens) for _ in range(repeats))
    generated = turns * turn_tokens
    return {
        "arch": arch,
        "context": context,
        "tokens_per_s": generated / seconds,
        "flops_per_token": conversation_flops(cfg, context, turns, turn_tokens) / generated,
        # What a token of a later turn costs: the context is in place, only the turn's own work remains.
        "later_turn_flops_per_token": turn_flops(cfg, context, turns - 1, turn_tokens) / turn_tokens,
    }


def write_report(rows: list[dict], out: Path, header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    contexts = sorted({r["context"] for r in rows})
    cell = {(r["arch"], r["context"]): r for r in rows}
    lines = [
        "# Generation cost when the output joins the context",
        "",
        header,
        "",
        "| context | " + " | ".join(f"{LABELS[a]} tok/s | GFLOPs/token | last turn" for a in ARCHS) + " |",
        "|---|" + "---|---|---|" * len(ARCHS),
    ]
    for c in contexts:
        values = [
            f"{cell[a, c]['tokens_per_s']:,.0f} | {cell[a, c]['flops_per_token'] / 1e9:.3f} | "
            f"{cell[a, c]['later_turn_flops_per_token'] / 1e9:.3f}"
            for a in ARCHS
        ]
        lines.append(f"| {c} | " + " | ".join(values) + " |")
    lines += [
        "",
        "GFLOPs/token: the whole conversation's FLOPs per generated token; last turn: the last turn's FLOPs per "
        "token it generates (the decoder-only model only appends; the others reprocess the grown context).",
    ]
    lines += ["", "![generation_cost.png](generation_cost.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    plt = pyplot()
    fig, (ax_time, ax_flops) = plt.subplots(1, 2, figsize=(10, 4))
    for a in ARCHS:
        ax_time.plot(contexts, [cell[a, c]["tokens_per_s"] for c in contexts], "o-", label=LABELS[a])
        ax_flops.plot(contexts, [cell[a, c]["flops_per_token"] for c in contexts], "o-", label=LABELS[a])
    for ax, label in ((ax_time, "generated tokens/s"), (ax_flops, "FLOPs per generated token")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context before the turns (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_flops.legend()
    fig.tight_layout()
    fig.savefig(out / "generation_cost.png", dpi=120)
    plt.close(fig)


def host() -> str:
    """The device the benchmark ran on, in words (a CPU's model name and core count)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{jax.device_count()} x {device.device_kind}"
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
    ]
    return f"{os.cpu_count()} cores of {names[0] if names else 'a CPU'}"


def main(argv: list[str]) -> None:
    del argv
    turns, turn_tokens = _TURNS.value, _TURN_TOKENS.value
    header = (
        f"{turns} turns of {turn_tokens} tokens after the context, greedy, batch 1, float32; "
        f"{_LAYERS.value} layers x {_WIDTH.value} per stack, vocabulary 8192; {host()}. "
        "tok/s: generated tokens per second over the whole conversation "
        "(the first prefill or encoding included)."
    )
    print(header)
    rows = []
    for context in map(int, _CONTEXTS.value):
        for arch in ARCHS:
            row = measure(arch, context, turns, turn_tokens, _REPEATS.value, _LAYERS.value, _WIDTH.value)
            rows.append(row)
            print(
                f"context {context:5d} {LABELS[arch]:16s} {row['tokens_per_s']:9.0f} tok/s "
                f"{row['flops_per_token'] / 1e9:8.3f} GFLOPs/token",
                flush=True,
            )
    if _OUT.value:
        write_report(rows, Path(_OUT.value), header)


if __name__ == "__main__":
    app.run(main)
