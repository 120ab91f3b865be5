"""Load a run from its workdir: config, tokenizer, model and the latest checkpoint's parameters, on a mesh.

A run decodes and evaluates on a ``(data, fsdp, tensor)`` mesh like the one
it trained on (``sharding.make_mesh``): by default the run's own
``config.mesh``, or another one that fits the local devices, since checkpoints
restore onto any mesh.  The parameters are restored already sharded by the
partition rules, and decoding splits its rows over ``data`` x ``fsdp`` and
heads over ``tensor`` (:func:`gpt2_jax.generation.complete`).  On several hosts (after
``jax.distributed.initialize()``, see :mod:`gpt2_jax.run_flags`) the mesh
spans them all and every host passes the same inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections

from gpt2_jax import batch as batch_lib
from gpt2_jax import checkpointing, files, sharding
from gpt2_jax import workdir as workdir_lib
from gpt2_jax.data import tokenizers
from gpt2_jax.errors import CheckpointError, ConfigError
from gpt2_jax.model import Transformer, TransformerConfig


@dataclasses.dataclass
class Run:
    """A trained (or training) run, ready to decode or evaluate, with its parameters on ``mesh``."""

    workdir: Path
    config: ml_collections.ConfigDict
    model: Transformer
    params: Any
    tokenizer: tokenizers.Tokenizer
    step: int
    mesh: jax.sharding.Mesh

    @property
    def arch(self) -> str:
        return self.model.cfg.arch


def abstract_params(cfg: TransformerConfig) -> Any:
    """Shapes of the parameters of a model of ``cfg`` (no arrays are allocated)."""
    dummy = batch_lib.dummy(cfg.arch, 1, cfg.max_len, cfg.max_len, cfg.vector_dim)
    return jax.eval_shape(lambda: Transformer(cfg).init(jax.random.PRNGKey(0), dummy)["params"])


def decode_mesh(config: ml_collections.ConfigDict, mesh_config: Mapping[str, int] | None = None) -> jax.sharding.Mesh:
    """The mesh to load a run onto: ``mesh_config`` (``{"data": .., "fsdp": .., "tensor": ..}``) or the run's own."""
    try:
        return sharding.make_mesh(config.mesh if mesh_config is None else mesh_config)
    except ConfigError as e:
        if mesh_config is not None:
            raise
        raise ConfigError(
            f"this run trained on config.mesh {dict(config.mesh)}, which does not fit here ({e}); load it onto a "
            "mesh of the local devices: --mesh=data,fsdp,tensor (e.g. --mesh=-1,1,1), or runs.load(workdir, "
            "mesh_config={...})"
        ) from None


def parse_mesh(text: str) -> dict[str, int] | None:
    """``"data,fsdp,tensor"`` (e.g. ``"-1,1,2"``) as a mesh config; ``""`` is None (the run's own mesh)."""
    if not text:
        return None
    try:
        sizes = [int(t) for t in text.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) != len(sharding.AXES):
        raise ConfigError(f"--mesh={text!r}: expected three sizes data,fsdp,tensor (-1 = the rest), e.g. -1,1,1")
    return dict(zip(sharding.AXES, sizes, strict=True))


def load(workdir: str | Path, mesh_config: Mapping[str, int] | None = None) -> Run:
    """The run in ``workdir`` with the parameters (only) of its latest readable checkpoint, sharded on a mesh.

    The mesh is ``mesh_config`` or, by default, the run's own ``config.mesh``
    (resolved against the local devices).
    """
    workdir = Path(workdir)
    for name in ("config.json", "tokenizer.json"):
        if not (workdir / name).exists():
            raise CheckpointError(f"{workdir} holds no run ({name} is missing); pass the --workdir of a training run")
    if not (workdir / "checkpoints").is_dir():
        raise CheckpointError(f"{workdir} has no checkpoint yet; train it first")
    raw = files.read_json(workdir / "config.json", "the run's config")
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"{workdir / 'config.json'} is not a run's config; restore it from the run")
    config = workdir_lib.saved_config(raw)
    cfg = TransformerConfig.from_config(config.model.to_dict())
    mesh = decode_mesh(config, mesh_config)
    abstract = abstract_params(cfg)
    target = checkpointing.abstract_with_shardings(abstract, sharding.tree_shardings(abstract, mesh))
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints")
    try:
        restored = ckpt.restore(target, checkpointing.signature(cfg.arch, abstract, cfg.vocab_size), params_only=True)
    finally:
        ckpt.close()
    if restored is None:
        raise CheckpointError(f"{workdir} has no checkpoint yet; train it first")
    params, _, step = restored
    tokenizer = tokenizers.from_json(files.read_json(workdir / "tokenizer.json", "the run's tokenizer"))
    return Run(workdir, config, Transformer(cfg), params, tokenizer, step, mesh)
