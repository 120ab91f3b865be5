"""Load a run from its workdir: config, tokenizer, model and the latest checkpoint's parameters."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from gpt2_jax import batch as batch_lib
from gpt2_jax import checkpointing, optim
from gpt2_jax.data import tokenizers
from gpt2_jax.errors import CheckpointError
from gpt2_jax.model import Transformer, TransformerConfig


@dataclasses.dataclass
class Run:
    """A trained (or training) run, ready to decode or evaluate."""

    workdir: Path
    config: ml_collections.ConfigDict
    model: Transformer
    params: Any
    tokenizer: tokenizers.Tokenizer
    step: int

    @property
    def arch(self) -> str:
        return self.model.cfg.arch


def abstract_train_state(config: ml_collections.ConfigDict, cfg: TransformerConfig) -> Any:
    """Shapes of the train state a run of ``config`` checkpoints (no arrays are allocated)."""
    from gpt2_jax.train import TrainState

    model = Transformer(cfg)
    dummy = batch_lib.dummy(cfg.arch, 1, cfg.max_len, cfg.max_len, cfg.vector_dim)

    def init():
        params = model.init(jax.random.PRNGKey(0), dummy)["params"]
        tx = optim.make(config.optimizer, config.num_train_steps, params)
        zero = jnp.zeros((), jnp.int32)
        return TrainState(
            step=zero, params=params, opt_state=tx.init(params), rng=jax.random.PRNGKey(0), nonfinite_steps=zero
        )

    return jax.eval_shape(init)


def load(workdir: str | Path) -> Run:
    """The run in ``workdir`` with the parameters of its latest readable checkpoint."""
    workdir = Path(workdir)
    for name in ("config.json", "tokenizer.json"):
        if not (workdir / name).exists():
            raise CheckpointError(f"{workdir} holds no run ({name} is missing); pass the --workdir of a training run")
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    cfg = TransformerConfig(**{k: v for k, v in config.model.to_dict().items() if k in fields})
    abstract = abstract_train_state(config, cfg)
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints")
    try:
        restored = ckpt.restore(abstract, checkpointing.signature(cfg.arch, abstract.params, cfg.vocab_size))
    finally:
        ckpt.close()
    if restored is None:
        raise CheckpointError(f"{workdir} has no checkpoint yet; train it first")
    state, _, step = restored
    return Run(workdir, config, Transformer(cfg), state.params, tokenizers.load(workdir / "tokenizer.json"), step)
