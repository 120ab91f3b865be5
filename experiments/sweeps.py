"""Sweep definitions: a base config and axes, expanded into named runs (cells x seeds).

A sweep config file (``configs/sweeps/NAME.py``) defines ``get_sweep(variant)``
returning a :class:`Sweep`.  Each axis is a list of ``(label, overrides)``;
the product of the axes gives the cells, and each cell runs once per seed.
Its docstring states the hypothesis and the published result it mirrors.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

from gpt2_jax import files, flops
from gpt2_jax import workdir as workdir_lib
from gpt2_jax.errors import ConfigError
from gpt2_jax.model import TransformerConfig


@dataclasses.dataclass
class Metric:
    """A report column: ``path`` into a run's ``results.json`` (dots), and how to read it."""

    name: str
    path: str
    higher_is_better: bool = True
    scale: float = 1.0  # e.g. 100 for percentages, 1/ln(2) for bits
    only: str = ""  # report it only for cells whose name contains this ("" = every cell)
    skip: str = ""  # ... and not for cells whose name contains this

    def applies(self, cell: str) -> bool:
        return (not self.only or self.only in cell) and not (self.skip and self.skip in cell)


@dataclasses.dataclass
class Curve:
    """A report plot of metrics measured at several points of one quantity (e.g. bits/char against the cut)."""

    x_label: str
    points: list[tuple[float, Metric]]  # (x, the metric measured there)
    file: str = "curve.png"


@dataclasses.dataclass
class Sweep:
    name: str
    hypothesis: str
    base: ml_collections.ConfigDict
    axes: list[tuple[str, list[tuple[str, dict[str, Any]]]]]
    seeds: list[int]
    metrics: list[Metric]
    matched: str  # what the comparison holds equal (parameters, FLOPs, tokens, ...)
    example_lengths: tuple[int, int] = (0, 0)  # mean (prefix, continuation) tokens of one example
    # Or per cell, from its config (a sweep whose cells read different data).
    example_lengths_of: Callable[[ml_collections.ConfigDict], tuple[int, int]] | None = None
    # Splits to decode and score (BLEU): "test" greedily, "test:beam4" with a beam of 4; results under
    # ``decoded.<entry>`` of a run's status.
    decode: list[str] = dataclasses.field(default_factory=list)
    # What the report tests each cell against: {axis: label}; by default the first label of the last axis
    # other than the tuned one.
    reference: dict[str, str] = dataclasses.field(default_factory=dict)
    # An axis tuned per cell (a learning rate): the report keeps, for every combination of the other axes, the
    # label whose tune_metric (a validation metric; default the main metric) has the best mean over the seeds that
    # tune it (tune_seeds, or every seed).
    tune: str = ""
    tune_metric: Metric | None = None
    # Seeds that run every label of the tuned axis and choose it; the other seeds then run only each cell's
    # chosen label (empty: every seed runs every label).
    tune_seeds: list[int] = dataclasses.field(default_factory=list)
    curve: Curve | None = None  # drawn per cell (mean ± std over seeds); its metrics are reported too
    # An axis of model sizes: the report draws the main metric against training FLOPs, one curve per combination
    # of the other axes, with a power-law fit each and where the fits cross (experiments/scaling.py).
    scaling: str = ""
    # Run only the cells whose name without the tuned label (e.g. "op-last / DO 2") matches this regular
    # expression (``experiments.sweep --cells``), to run a sweep in parts; the report lists every cell.
    only_cells: str = ""

    def flops_per_example(self, config: ml_collections.ConfigDict, vocab_size: int = 0) -> float | None:
        """Training FLOPs of one example of a cell's config (None when the sweep does not say its lengths)."""
        lengths = self.example_lengths_of(config) if self.example_lengths_of else self.example_lengths
        return example_flops(config, lengths, vocab_size) if lengths[1] else None

    def __post_init__(self) -> None:
        for entry in self.decode:
            decode_entry(entry)  # a malformed entry fails here, not after a run has trained
        if self.tune_seeds and not set(self.tune_seeds) <= set(self.seeds):
            raise ConfigError(f"the tuning seeds {self.tune_seeds} must be among the sweep's seeds {self.seeds}")
        if self.only_cells:
            try:
                re.compile(self.only_cells)
            except re.error as e:
                raise ConfigError(f"--cells {self.only_cells!r} is not a regular expression: {e}") from None
            if not any(self.selected(labels) for labels, _ in self.cells()):
                names = list(dict.fromkeys(" / ".join(self.untuned(labels)) for labels, _ in self.cells()))
                raise ConfigError(f"--cells {self.only_cells!r} matches none of the cells: {'; '.join(names)}")

    def selected(self, labels: dict[str, str]) -> bool:
        """Whether ``only_cells`` lets this cell run."""
        return not self.only_cells or re.search(self.only_cells, " / ".join(self.untuned(labels))) is not None

    def untuned(self, labels: dict[str, str]) -> tuple[str, ...]:
        """A cell's labels without the tuned axis: what identifies it once its tuned label is chosen."""
        return tuple(v for k, v in labels.items() if k != self.tune)

    def reference_labels(self) -> dict[str, str]:
        if self.reference:
            return dict(self.reference)
        axis, values = [(a, v) for a, v in self.axes if a != self.tune][-1]
        return {axis: values[0][0]}

    def report_metrics(self) -> list[Metric]:
        """The metrics a report reads: the table's, and the one that tunes ``tune``."""
        extra = [self.tune_metric] if self.tune_metric and self.tune_metric not in self.metrics else []
        if self.curve:
            extra += [m for _, m in self.curve.points if m not in self.metrics]
        return [*self.metrics, *extra]

    @property
    def main_metric(self) -> Metric:
        return self.metrics[0]

    def cells(self) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """``(labels, overrides)`` of every cell, in axis order."""
        out = []
        for combo in itertools.product(*(values for _, values in self.axes)):
            labels = {axis: label for (axis, _), (label, _) in zip(self.axes, combo, strict=True)}
            overrides: dict[str, Any] = {}
            for _, o in combo:
                overrides.update(o)
            out.append((labels, overrides))
        return out

    def runs(self) -> list[RunSpec]:
        """Every cell on every seed (a sweep with ``tune_seeds`` runs only part of these)."""
        return self._specs(self.cells(), self.seeds)

    def tuning_runs(self) -> list[RunSpec]:
        """What runs first: every cell on the tuning seeds (every seed when there are none)."""
        return self._specs(self.cells(), self.tune_seeds or self.seeds)

    def chosen_runs(self, chosen: dict[tuple[str, ...], str]) -> list[RunSpec]:
        """The other seeds of each cell whose tuned label is ``chosen[untuned labels]``."""
        cells = [(labels, o) for labels, o in self.cells() if chosen.get(self.untuned(labels)) == labels[self.tune]]
        return self._specs(cells, [s for s in self.seeds if s not in self.tune_seeds])

    def _specs(self, cells: list[tuple[dict[str, str], dict[str, Any]]], seeds: list[int]) -> list[RunSpec]:
        specs = []
        for labels, overrides in cells:
            if not self.selected(labels):
                continue
            for seed in seeds:
                config = apply(self.base, {**overrides, "seed": seed})
                specs.append(RunSpec(run_name(labels, seed), labels, seed, config, list(self.decode)))
        return specs


@dataclasses.dataclass
class RunSpec:
    name: str
    labels: dict[str, str]
    seed: int
    config: ml_collections.ConfigDict
    decode: list[str]

    @property
    def cell(self) -> str:
        return " / ".join(self.labels.values())


def decode_entry(entry: str) -> tuple[str, int]:
    """``"test"`` -> ("test", 0) (greedy); ``"test:beam4"`` -> ("test", 4)."""
    split, _, how = entry.partition(":")
    if not how:
        return split, 0
    width = how.removeprefix("beam")
    if how == width or not width.isdigit() or int(width) < 1:
        raise ConfigError(f"decode entry {entry!r}: write a split, or a split and ':beam<K>' (e.g. 'test:beam4')")
    return split, int(width)


def run_name(labels: dict[str, str], seed: int) -> str:
    parts = [re.sub(r"[^A-Za-z0-9.+-]+", "-", label).strip("-") for label in labels.values()]
    return "__".join([*parts, f"s{seed}"])


def apply(base: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``base`` with dotted-path overrides (an unknown field is an error)."""
    config = copy.deepcopy(base)
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"sweep override {key!r}: the config has no field {leaf!r}")
        node[leaf] = value
    return config


def load(spec: str) -> Sweep:
    """``path/to/sweep.py[:variant]`` -> the Sweep its ``get_sweep`` returns."""
    path, _, variant = spec.partition(":")
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"sweep config {file} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"sweep_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_sweep(variant) if variant else module.get_sweep()


def model_config(config: ml_collections.ConfigDict, vocab_size: int = 0) -> TransformerConfig:
    """The model a run config describes (vocabulary and positions approximated when not resolved yet)."""
    values = config.model.to_dict()
    values["vocab_size"] = config.model.vocab_size or vocab_size or 64
    values["max_len"] = config.model.max_len or config.data.seq_len
    if config.data.dataset == "icl_regression":
        values["vector_dim"] = config.data.icl.dim + 1
    return TransformerConfig.from_config(values)


def example_flops(config: ml_collections.ConfigDict, lengths: tuple[int, int], vocab_size: int = 0) -> float:
    """Training FLOPs of one example of ``lengths`` = (prefix, continuation) tokens under this run's architecture."""
    cfg = model_config(config, vocab_size)
    prefix, continuation = lengths
    if cfg.arch == "encoder_decoder":
        return flops.train_flops(cfg, continuation, prefix)
    # Token rows are shifted by one (input i predicts token i + 1); real-valued rows and encoders are not.
    shifted = cfg.arch != "encoder_only" and not cfg.vector_dim
    return flops.train_flops(cfg, prefix + continuation - shifted)


def param_count(config: ml_collections.ConfigDict, vocab_size: int = 0) -> int:
    cfg = model_config(config, vocab_size)
    return flops.params(cfg, 8, 8)["total"]


def describe_lengths(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """Mean (prefix, continuation) tokens of a synthetic transduction example (source+sep, target+eos)."""
    s = config.data.synthetic
    mean = (s.min_len + s.max_len) / 2
    ops = max(len(task.split("+")) for task in s.task.split(","))
    return round(mean + ops + 1), round(mean + 1)


def definition(sweep: Sweep, spec: str) -> dict[str, Any]:
    """What ``sweep.json`` records: the sweep, its seeds, and every cell's whole config (seed aside)."""
    cells = {
        run_name(labels, 0).removesuffix("__s0"): apply(sweep.base, overrides).to_dict()
        for labels, overrides in sweep.cells()
    }
    for config in cells.values():
        config.pop("seed")
    return {
        "sweep": spec,
        "name": sweep.name,
        "seeds": sweep.seeds,
        "tune_seeds": sweep.tune_seeds,
        "decode": list(sweep.decode),
        "cells": cells,
    }


def definition_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """How a sweep directory's recorded definition differs from ``new``. Seeds may differ and cells may be added
    (they add runs: a learning-rate grid extended past the edge its best value sat on); a cell the directory holds
    must stay, with the same config."""
    if "cells" not in saved:  # recorded before whole definitions were: its run.json files are compared instead
        return []
    diffs = []
    if saved.get("name") != new["name"]:
        diffs.append(f"sweep {saved.get('name')!r} -> {new['name']!r}")
    missing = sorted(set(saved["cells"]) - set(new["cells"]))
    if missing:
        diffs.append(f"cells only in the directory: {missing[:3]}")
    for cell in sorted(set(saved["cells"]) & set(new["cells"])):
        diffs += [f"{cell}: {d}" for d in workdir_lib.config_differences(saved["cells"][cell], new["cells"][cell])]
    return diffs


def prepare(sweep: Sweep, workdir: Path, specs: list[RunSpec] | None = None) -> list[tuple[RunSpec, Path]]:
    """Write each run's ``run.json`` (default: every run) once all are checked: an existing one must hold the same
    config."""
    planned = []
    for spec in sweep.runs() if specs is None else specs:
        run_dir = workdir / "runs" / spec.name
        content = {
            "name": spec.name,
            "labels": spec.labels,
            "seed": spec.seed,
            "config": spec.config.to_dict(),
            "decode": spec.decode,
        }
        path = run_dir / "run.json"
        if path.exists():
            saved = files.read_json(path, "a sweep run's config")
            diffs = workdir_lib.config_differences(saved["config"], content["config"])
            if diffs:
                raise ConfigError(
                    f"{run_dir} holds a run of a different config ({'; '.join(diffs[:5])}); "
                    "use another --workdir for a changed sweep"
                )
        planned.append((spec, run_dir, content))
    for _, run_dir, content in planned:
        run_dir.mkdir(parents=True, exist_ok=True)
        files.write_json(run_dir / "run.json", content)
    return [(spec, run_dir) for spec, run_dir, _ in planned]
