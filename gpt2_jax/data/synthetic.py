"""Synthetic tasks generated from a seed (no files).

* Sequence transduction (T5 Table 2 in miniature): a string of lowercase
  symbols and one or more operation tokens, placed before ("op-first") or
  after ("op-last") the string; the target is the transformed string.
  Operations compose left to right: ``"RS"`` reverses, then sorts.
* In-context linear regression (Ding et al. 2023): sequences of ``(x, w.x)``
  pairs with a fresh ``w`` per sequence, followed by queries.
* Facts for the reversal curse (Berglund et al. 2023; Wu et al. 2024): random
  ``(name, attribute)`` pairs, trained as "NAME is ATTR." and asked both ways.

Every generator is a pure function of its parameters, so a prepared dataset is
cached under a fingerprint of them.
"""

from __future__ import annotations

import string
from collections.abc import Callable

import numpy as np

from gpt2_jax.errors import DataError

# Operation token -> transformation of a list of symbol indices.
OPERATIONS: dict[str, tuple[str, Callable[[list[int], int], list[int]]]] = {
    "copy": ("C", lambda s, k: list(s)),
    "reverse": ("R", lambda s, k: s[::-1]),
    "sort": ("S", lambda s, k: sorted(s)),
    "shift": ("H", lambda s, k: [(x + 1) % k for x in s]),
    "dedup": ("D", lambda s, k: [x for i, x in enumerate(s) if i == 0 or x != s[i - 1]]),
}


def parse_tasks(spec: str) -> list[list[str]]:
    """``"copy,reverse+sort"`` -> ``[["copy"], ["reverse", "sort"]]`` (a mixture of compositions)."""
    tasks = []
    for task in spec.split(","):
        ops = [op.strip() for op in task.split("+") if op.strip()]
        unknown = [op for op in ops if op not in OPERATIONS]
        if not ops or unknown:
            raise DataError(
                f"unknown synthetic task {task!r} in config.data.synthetic.task; use operations from "
                f"{', '.join(OPERATIONS)} joined by '+' (composition) and ',' (mixture)"
            )
        tasks.append(ops)
    return tasks


def transduction_pairs(
    task: str,
    op_position: str,
    alphabet_size: int,
    lengths: tuple[int, int],
    num: int,
    seed: int,
    exclude: set[str] | None = None,
) -> list[tuple[str, str]]:
    """``num`` distinct (source, target) strings with lengths drawn uniformly from ``lengths`` (inclusive)."""
    if not 2 <= alphabet_size <= 26:
        raise DataError(f"config.data.synthetic.alphabet_size must be in [2, 26], got {alphabet_size}")
    if op_position not in ("first", "last"):
        raise DataError(f"config.data.synthetic.op_position must be 'first' or 'last', got {op_position!r}")
    lo, hi = lengths
    if not 1 <= lo <= hi:
        raise DataError(f"synthetic lengths must satisfy 1 <= min <= max, got {lengths}")
    tasks = parse_tasks(task)
    capacity = sum(alphabet_size**n for n in range(lo, hi + 1)) * len(tasks)
    if num > capacity // 2:
        raise DataError(f"cannot draw {num} distinct examples from {capacity} possible; widen the lengths or alphabet")
    letters = string.ascii_lowercase[:alphabet_size]
    rng = np.random.default_rng(seed)
    exclude = exclude or set()
    seen: set[str] = set()
    pairs = []
    while len(pairs) < num:
        ops = tasks[int(rng.integers(len(tasks)))]
        symbols = list(rng.integers(0, alphabet_size, size=int(rng.integers(lo, hi + 1))))
        result = symbols
        for op in ops:
            result = OPERATIONS[op][1](result, alphabet_size)
        op_tokens = "".join(OPERATIONS[op][0] for op in ops)
        body = "".join(letters[i] for i in symbols)
        source = op_tokens + body if op_position == "first" else body + op_tokens
        if source in seen or source in exclude:
            continue
        seen.add(source)
        pairs.append((source, "".join(letters[i] for i in result)))
    return pairs


def operation_splits(task: str, pairs: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """A mixture's pairs split by operation: ``{"reverse": [...], "reverse_sort": [...]}`` (empty for one task)."""
    tasks = parse_tasks(task)
    if len(tasks) < 2:
        return {}
    by_tokens = {"".join(OPERATIONS[op][0] for op in ops): "_".join(ops) for ops in tasks}
    out: dict[str, list[tuple[str, str]]] = {name: [] for name in by_tokens.values()}
    for source, target in pairs:
        out[by_tokens["".join(ch for ch in source if ch.isupper())]].append((source, target))
    return out


# The splits transduction_splits makes; part of the prepared data's cache key, so that a change of them rebuilds it.
TRANSDUCTION_SPLITS = ("train", "validation", "test", "test_ood")


def transduction_splits(cfg) -> dict[str, list[tuple[str, str]]]:
    """train / validation (choosing learning rates) / test (reported) at the same lengths, pairwise disjoint, and
    test_ood (held-out longer lengths, when configured)."""
    args = (cfg.task, cfg.op_position, cfg.alphabet_size)
    lengths = (cfg.min_len, cfg.max_len)
    train = transduction_pairs(*args, lengths, cfg.num_train, cfg.seed)
    seen = {s for s, _ in train}
    validation = transduction_pairs(*args, lengths, cfg.num_eval, cfg.seed + 1, seen)
    seen |= {s for s, _ in validation}
    splits = {
        "train": train,
        "validation": validation,
        "test": transduction_pairs(*args, lengths, cfg.num_eval, cfg.seed + 3, seen),
    }
    if cfg.ood_max_len > 0:
        splits["test_ood"] = transduction_pairs(*args, (cfg.ood_min_len, cfg.ood_max_len), cfg.num_eval, cfg.seed + 2)
    return splits


def regression_sequences(
    num: int, dim: int, num_examples: int, num_queries: int, noise: float, seed: int, x_distribution: str = "uniform"
) -> tuple[np.ndarray, np.ndarray]:
    """In-context linear regression: ``x [num, n, dim]``, ``y = w.x (+ noise)`` with ``w ~ N(0, I)`` per row.

    ``x ~ U(-1, 1)^dim`` (Ding et al. 2023) or ``N(0, I)`` (Garg et al. 2022).
    ``n = num_examples + num_queries``: the first ``num_examples`` pairs are
    the context, the rest are queries whose ``y`` the model predicts.
    """
    rng = np.random.default_rng(seed)
    n = num_examples + num_queries
    if x_distribution == "uniform":
        x = rng.uniform(-1.0, 1.0, (num, n, dim)).astype(np.float32)
    elif x_distribution == "normal":
        x = rng.standard_normal((num, n, dim)).astype(np.float32)
    else:
        raise DataError(f"config.data.icl.x_distribution must be 'uniform' or 'normal', got {x_distribution!r}")
    w = rng.standard_normal((num, dim)).astype(np.float32)
    y = np.einsum("bnd,bd->bn", x, w) + noise * rng.standard_normal((num, n))
    return x, y.astype(np.float32)


def zero_predictor_mse(dim: int, noise: float, x_distribution: str) -> float:
    """``E[y^2]``, the error of always predicting 0: ``d/3 + noise^2`` under U(-1, 1), ``d + noise^2`` under N(0, 1)."""
    second_moment = {"uniform": 1.0 / 3.0, "normal": 1.0}[x_distribution]
    return dim * second_moment + noise**2


def regression_splits(cfg) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train / validation (choosing learning rates) / test (reported), each from its own seed."""
    args = (cfg.dim, cfg.num_examples, cfg.num_queries, cfg.noise)
    return {
        "train": regression_sequences(cfg.num_train, *args, cfg.seed, cfg.x_distribution),
        "validation": regression_sequences(cfg.num_eval, *args, cfg.seed + 1, cfg.x_distribution),
        "test": regression_sequences(cfg.num_eval, *args, cfg.seed + 2, cfg.x_distribution),
    }


_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def _word(rng: np.random.Generator, syllables: int) -> str:
    return "".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), size=syllables))


def facts(num: int, seed: int) -> list[tuple[str, str]]:
    """``num`` distinct (name, attribute) pairs of made-up words, e.g. ``("Kavo Lumi", "the tesa of pirado")``."""
    rng = np.random.default_rng(seed)
    names, attrs, out = set(), set(), []
    while len(out) < num:
        name = f"{_word(rng, 2).title()} {_word(rng, 2).title()}"
        attr = f"the {_word(rng, 2)} of {_word(rng, 3)}"
        if name in names or attr in attrs:
            continue
        names.add(name)
        attrs.add(attr)
        out.append((name, attr))
    return out
