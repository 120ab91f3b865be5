"""Small configs and batches shared by the tests."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import ml_collections

from configs import default

REPO = Path(__file__).resolve().parents[1]

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
)


def write_corpus(directory: Path, repeats: int = 40, text: str = TEXT) -> Path:
    path = directory / "corpus.txt"
    path.write_text(text * repeats)
    return path


def tiny_config(arch: str = "decoder_only", corpus: Path | None = None, **overrides) -> ml_collections.ConfigDict:
    """A model small enough to compile and train in seconds on one CPU device."""
    config = default.get_config()
    config.model.arch = arch
    config.model.num_layers = 2
    config.model.num_heads = 2
    config.model.emb_dim = 32
    config.data.seq_len = 16
    config.batch_size = 8
    config.eval_batch_size = 16
    config.num_train_steps = 20
    config.eval_every_steps = 10
    config.log_every_steps = 5
    config.checkpoint_every_steps = 10
    config.optimizer.warmup_steps = 2
    config.mesh.data = 1
    if corpus is not None:
        config.data.corpus = str(corpus)
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def small_copy_config(arch: str = "encoder_decoder", task: str = "copy"):
    """The copy task at a size that trains to high exact match in ~150 steps on a CPU."""
    from configs import synthetic

    config = synthetic.get_config(task)
    config.mesh.data = 1
    config.model.arch = arch
    config.model.emb_dim, config.model.num_heads = 64, 2
    s = config.data.synthetic
    s.alphabet_size, s.min_len, s.max_len, s.ood_max_len, s.num_train, s.num_eval = 8, 2, 8, 0, 4000, 200
    config.data.seq_len, config.batch_size = 24, 32
    config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 150
    config.optimizer.learning_rate, config.optimizer.min_learning_rate, config.optimizer.warmup_steps = 3e-3, 3e-4, 30
    return config


_COLLECTIVE = re.compile(r"= (.+?) (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)\(")
_ARRAY = re.compile(r"(pred|bf16|[fsu](\d+))\[([\d,]*)\]")


def collective_bytes(hlo_text: str) -> Counter:
    """Bytes that each kind of collective produces per device in a compiled CPU program (``compiled.as_text()``)."""
    moved: Counter = Counter()
    for line in hlo_text.splitlines():
        op = _COLLECTIVE.search(line)
        if op is None:
            continue
        for dtype, bits, dims in _ARRAY.findall(op.group(1)):
            size = 1
            for d in filter(None, dims.split(",")):
                size *= int(d)
            moved[op.group(2)] += size * (1 if dtype == "pred" else 2 if dtype == "bf16" else int(bits) // 8)
    return moved


def loop_collectives(hlo_text: str) -> list[str]:
    """The collectives inside loop bodies of a compiled program: they run once per iteration, not once per step."""
    bodies = set(re.findall(r"while\(.*?body=%?([\w.\-]+)", hlo_text))
    found = []
    for computation in re.split(r"\n(?=\S)", hlo_text):
        header = computation.split("(", 1)[0].split()
        if header and header[-1].lstrip("%") in bodies:
            found += [line.strip() for line in computation.splitlines() if _COLLECTIVE.search(line)]
    return found


def jaxpr_equations(jaxpr) -> Iterator:
    """Every equation of a jaxpr, nested ones (custom_vjp, pjit) included."""
    for e in jaxpr.eqns:
        yield e
        for p in e.params.values():
            for sub in p if isinstance(p, tuple | list) else [p]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    yield from jaxpr_equations(inner if hasattr(inner, "eqns") else sub.jaxpr)
