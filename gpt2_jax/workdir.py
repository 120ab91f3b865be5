"""A run's workdir: what may change on resume, and the refusal of a workdir that holds another run."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import jax
import ml_collections

from gpt2_jax import files
from gpt2_jax.data import sources, tokenizers
from gpt2_jax.errors import CheckpointError
from gpt2_jax.model import TransformerConfig

log = logging.getLogger(__name__)

# Fields that may change between a run and its resumption: how long it runs,
# how often it reports, and where and how it computes (the same function on
# another mesh or machine, with recomputation, fused attention, another loss
# chunk length, gradient accumulation or compiler options: tested equal), not
# what it computes.
RESUMABLE_CHANGES = (
    "num_train_steps",
    "eval_every_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "max_checkpoints_to_keep",
    "data.data_dir",
    "data.cache_dir",
    "mesh.data",
    "mesh.fsdp",
    "mesh.tensor",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
    "model.remat",
    "model.remat_policy",
    "model.loss_chunk_len",
    "model.attention_impl",
    "model.loss_impl",
    "model.gelu_impl",
    "optimizer.grad_accum_steps",
    "xla_options",
)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Model fields whose 0 means "derive from the data"; a resolved value in config.json is not a difference.
AUTO_FIELDS = ("model.vocab_size", "model.max_len", "model.mlp_dim", "model.num_encoder_layers", "model.vector_dim")


def config_differences(saved: dict, config_dict: dict, ignore: Collection[str] = ()) -> list[str]:
    """``"field: saved -> new"`` for each field of ``config_dict`` (dotted names) that differs from ``saved``.

    A field that ``saved`` lacks was added to the code after ``saved`` was
    written, and counts as unchanged where ``config_dict`` holds its default: a
    new field's default keeps the behaviour from before it existed (see
    ``configs/default.py``), so runs and sweeps saved by older code resume.
    """
    from configs import default  # the one config schema

    defaults = _flatten(json.loads(json.dumps(default.get_config().to_dict())))
    old, new = _flatten(saved), _flatten(json.loads(json.dumps(config_dict)))
    return [
        f"{k}: {old.get(k)!r} -> {new[k]!r}"
        for k in sorted(new)
        if k not in ignore and old.get(k) != new[k] and not (k not in old and k in defaults and new[k] == defaults[k])
    ]


def saved_config(saved: dict) -> ml_collections.ConfigDict:
    """A config saved by a run or a sweep, with the fields added to the schema since then at their defaults.

    A new field's default keeps the behaviour from before it existed (``configs/default.py``), so an older
    run's config means today what it meant when it was saved.
    """
    from configs import default  # the one config schema

    config = default.get_config()
    with config.unlocked():
        _overlay(config, saved)
    return config


def _overlay(config: ml_collections.ConfigDict, saved: dict) -> None:
    for key, value in saved.items():
        if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
            _overlay(config[key], value)
        else:
            config[key] = value


def check_workdir(workdir: Path, config_dict: dict, overwrite: bool) -> None:
    """Refuse a workdir that holds a run of another config (unless ``overwrite``, which clears it).

    ``config_dict`` is the config as given (automatic fields still 0); what the
    data resolves them to is checked against the checkpoint instead.
    """
    path = workdir / "config.json"
    if not path.exists():
        return
    saved = files.read_json(path, "the run's config; restore it, or delete it and the checkpoints' own check remains")
    given = _flatten(config_dict)
    automatic = [k for k in AUTO_FIELDS if given.get(k) == 0]
    diffs = config_differences(saved, config_dict, (*RESUMABLE_CHANGES, *automatic))
    if not diffs:
        return
    if not overwrite:
        raise CheckpointError(
            f"{workdir} holds a run of a different config ({'; '.join(diffs[:5])}); "
            "use another --workdir, or pass --overwrite to delete that run and start over"
        )
    log.warning("overwriting the run in %s (%s)", workdir, "; ".join(diffs[:5]))
    for name in ("checkpoints", "unreadable_checkpoints", "tensorboard"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    for name in ("metrics.jsonl", "results.json", "config.json", "tokenizer.json", DATA_FILE):
        (workdir / name).unlink(missing_ok=True)


def resolved_config(config: ml_collections.ConfigDict, mc: TransformerConfig) -> dict:
    """The config as run: the automatic model fields replaced by what the data resolved them to."""
    out = config.to_dict()
    out["model"].update(dataclasses.asdict(mc))
    return out


def lock(workdir: Path) -> files.DirectoryLock:
    """Create ``workdir`` if needed and take its lock: one writer per workdir (process 0 of a multi-host run)."""
    files.ensure_writable_dir(workdir, "workdir")
    directory_lock = files.DirectoryLock(workdir, "workdir")
    return directory_lock.acquire() if jax.process_index() == 0 else directory_lock


DATA_FILE = "data_fingerprint.json"


def data_fingerprints(data: Any) -> dict[str, str]:
    """What a resume must find unchanged: the data's contents and the tokenizer built from them."""
    return {"data": data.fingerprint, "tokenizer": sources.fingerprint(data.tokenizer.to_json())}


def check_data(workdir: Path, fingerprints: dict[str, str], accept_data_change: bool) -> None:
    """Refuse to resume on data or a tokenizer other than the run's (``accept_data_change`` lets data change)."""
    path = workdir / DATA_FILE
    if not path.exists():
        return  # a run written before fingerprints were kept: nothing to compare with
    saved = files.read_json(path, "the fingerprints of the run's data")
    if saved.get("tokenizer") != fingerprints["tokenizer"]:
        raise CheckpointError(
            f"the tokenizer built from the data differs from the one the run in {workdir} was trained with "
            "(the data changed: its token ids would mean other symbols); restore the data, or train in another "
            "--workdir"
        )
    if saved.get("data") != fingerprints["data"]:
        if not accept_data_change:
            raise CheckpointError(
                f"the data differs from the data the run in {workdir} was trained on (config.data's files or "
                "generator settings changed); restore it, train in another --workdir, or pass --accept_data_change "
                "to continue this run on the new data"
            )
        log.warning("continuing the run in %s on changed data (--accept_data_change)", workdir)


def write_run_files(
    workdir: Path,
    config: ml_collections.ConfigDict,
    model_config: TransformerConfig,
    tokenizer: tokenizers.Tokenizer,
    fingerprints: dict[str, str],
) -> None:
    """``config.json``, ``tokenizer.json`` and the data's fingerprints, written atomically once all checks passed."""
    if jax.process_index() > 0:
        return
    files.write_json(workdir / "config.json", resolved_config(config, model_config))
    tokenizers.save(tokenizer, workdir / "tokenizer.json")
    files.write_json(workdir / DATA_FILE, fingerprints)
