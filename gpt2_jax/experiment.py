"""The built pieces of a run: data, model, mesh, optimizer, shardings and the compiled steps."""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gpt2_jax import checkpointing, flops, losses, optim, sharding, validation
from gpt2_jax import data as data_lib
from gpt2_jax.errors import CheckpointError, ConfigError
from gpt2_jax.model import Transformer, TransformerConfig
from gpt2_jax.steps import TrainState, answer_log_likelihoods, eval_step, train_step

log = logging.getLogger(__name__)


def model_config(
    config: ml_collections.ConfigDict, vocab_size: int, data_max_len: int, vector_dim: int = 0
) -> TransformerConfig:
    """Resolve the automatic model fields (vocabulary, position table, vector inputs) against the data."""
    m = config.model
    if m.vocab_size and m.vocab_size != vocab_size:
        raise ConfigError(
            f"config.model.vocab_size={m.vocab_size} but the {config.data.tokenizer!r} tokenizer has "
            f"{vocab_size} tokens; set config.model.vocab_size=0 to take it from the tokenizer"
        )
    if m.max_len and m.max_len < data_max_len:
        raise ConfigError(
            f"config.model.max_len={m.max_len} is shorter than the data's sequences ({data_max_len} positions); "
            "raise it or set it to 0"
        )
    if m.vector_dim and m.vector_dim != vector_dim:
        raise ConfigError(f"config.model.vector_dim={m.vector_dim} but the data has {vector_dim}; set it to 0")
    values = m.to_dict()
    values.update(vocab_size=vocab_size, max_len=m.max_len or data_max_len, vector_dim=vector_dim)
    return TransformerConfig.from_config(values)


class Experiment:
    """The built pieces of a run: data, model, optimizer, mesh, shardings and compiled steps."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
        validation.validate(config)
        validation.validate_on_backend(config)
        self.config = config
        self.data = data_lib.build(config)
        self.model_config = model_config(
            config, self.data.tokenizer.vocab_size, self.data.max_len, self.data.vector_dim
        )
        self.model = Transformer(self.model_config)
        self.mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
        batch_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        micro = config.batch_size // config.optimizer.grad_accum_steps
        if micro % batch_shards:
            raise ConfigError(
                f"config.batch_size={config.batch_size} / grad_accum_steps={config.optimizer.grad_accum_steps} "
                f"= {micro} rows per micro-batch, not divisible by the {batch_shards} data x fsdp shards "
                f"of mesh {dict(self.mesh.shape)}; change the batch size or config.mesh"
            )
        if config.eval_batch_size % batch_shards:
            raise ConfigError(
                f"config.eval_batch_size={config.eval_batch_size} is not divisible by the {batch_shards} "
                f"data x fsdp shards of mesh {dict(self.mesh.shape)}"
            )
        tensor, rows = self.mesh.shape["tensor"], self.model_config.table_rows
        if rows % tensor:
            log.warning(
                "the %d-token table does not split over tensor=%d: the output layer all-reduces its logits instead "
                "of splitting the vocabulary; set config.model.pad_vocab_to=%d (or a multiple of it)",
                rows,
                tensor,
                tensor,
            )
        if self.model_config.remat and jax.default_backend() == "cpu":
            log.warning(
                "config.model.remat=True on the CPU only costs time: XLA:CPU's buffer assignment keeps the "
                "same peak memory with the recomputation (jax-ml/jax#19822); GPU and TPU backends save memory with it"
            )
        example = next(self.data.train_iterator())
        self._init_batch = {k: v[:1] for k, v in example.items()}
        # Model FLOPs of one train step (6N + 12 L d T per position of the batch's shape, padding included,
        # as MFU counts them) and one device's datasheet peak (None on CPUs and unknown devices).
        encoder = example.get("encoder_input_tokens")
        B, L = example["input_tokens"].shape
        self.flops_per_step = B * flops.train_flops(self.model_config, L, 0 if encoder is None else encoder.shape[1])
        self.peak_flops_per_device = flops.datasheet_peak(self.mesh.devices.flat[0], config.model.dtype)
        abstract_params = jax.eval_shape(self._init_params, jax.random.PRNGKey(0))
        self.tx = optim.make(config.optimizer, config.num_train_steps, abstract_params)
        self.abstract_state = jax.eval_shape(self._init_state, jax.random.PRNGKey(config.seed))
        self.state_shardings = sharding.tree_shardings(self.abstract_state, self.mesh)
        self.param_shardings = self.state_shardings.params
        self.signature = checkpointing.signature(
            self.model_config.arch, self.abstract_state.params, self.model_config.vocab_size
        )
        batch_sh = sharding.batch_sharding(self.mesh)
        repl = sharding.replicated(self.mesh)
        xla_options = validation.xla_options(config.xla_options)  # names checked by validate_on_backend
        self.train_step = jax.jit(
            sharding.traced_on(
                self.mesh,
                functools.partial(
                    train_step,
                    model=self.model,
                    tx=self.tx,
                    accum_steps=config.optimizer.grad_accum_steps,
                    clip_norm=config.optimizer.grad_clip_norm,
                ),
            ),
            in_shardings=(self.state_shardings, batch_sh),
            out_shardings=(self.state_shardings, repl),
            donate_argnums=0,
            compiler_options=xla_options,
        )
        self.eval_step = jax.jit(
            sharding.traced_on(self.mesh, functools.partial(eval_step, model=self.model)),
            in_shardings=(self.param_shardings, batch_sh),
            out_shardings=repl,
            compiler_options=xla_options,
        )
        self._init = jax.jit(self._init_state, out_shardings=self.state_shardings)
        self.answer_log_likelihoods = jax.jit(functools.partial(answer_log_likelihoods, model=self.model))

    def _init_params(self, key: jax.Array) -> Any:
        return self.model.init({"params": key}, self._init_batch)["params"]

    def _init_state(self, rng: jax.Array) -> TrainState:
        param_key, dropout_key = jax.random.split(rng)
        params = self._init_params(param_key)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            rng=dropout_key,
            nonfinite_steps=jnp.zeros((), jnp.int32),
        )

    def init_state(self) -> TrainState:
        """Fresh parameters (or ``model.init_from``'s pretrained ones) and optimizer state, placed on the mesh."""
        state = self._init(jax.random.PRNGKey(self.config.seed))
        if not self.config.model.init_from:
            return state
        from gpt2_jax import hf_gpt2

        _, pretrained = hf_gpt2.load(self.config.model.init_from, self.model_config.pad_vocab_to)
        expected = checkpointing.signature(self.model_config.arch, pretrained, self.model_config.vocab_size)
        diffs = checkpointing.signature_diff(expected, self.signature)
        if diffs:
            raise CheckpointError(
                f"config.model.init_from={self.config.model.init_from!r} does not fit this model: "
                + "; ".join(diffs[:3])
            )
        params = jax.device_put(pretrained, self.param_shardings)
        return state.replace(params=params, opt_state=jax.jit(self.tx.init)(params))

    def place(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Put this process's rows of a global batch on the mesh."""
        rows = sharding.process_slice(len(host_batch["input_tokens"]))
        return sharding.global_batch({k: v[rows] for k, v in host_batch.items()}, self.mesh)

    def evaluate(self, params, split: str = "validation") -> dict[str, float]:
        """Loss, accuracy (and exact match) over a whole evaluation split."""
        total = None
        for host_batch in self.data.eval_splits[split]():
            sums = self.eval_step(params, self.place(host_batch))
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        return losses.summarize(jax.device_get(total))

    def rank_answers(self, params, split: str) -> dict[str, float]:
        """Where the right answer ranks among every candidate answer by log-likelihood (1 = first; ties share).

        For datasets with ``ranking_questions`` (the reversal-curse facts):
        Berglund et al.'s comparison of the right answer's likelihood with
        every other one's.
        """
        ranks = []
        for batch, right in self.data.ranking_questions(split):
            ll = np.asarray(self.answer_log_likelihoods(params, batch))
            ranks.append(1 + np.sum(ll > ll[right]) + 0.5 * (np.sum(ll == ll[right]) - 1))
        ranks, candidates = np.array(ranks, np.float64), len(ranks)
        return {
            "rank_mean": float(ranks.mean()),
            "rank_median": float(np.median(ranks)),
            "top1": float(np.mean(ranks == 1)),
            "chance_rank_mean": (candidates + 1) / 2,
            "candidates": candidates,
        }

    def num_params(self) -> tuple[int, int]:
        """(all parameters, embedding parameters)."""
        flat = flax.traverse_util.flatten_dict(self.abstract_state.params)
        total = sum(int(np.prod(v.shape)) for v in flat.values())
        emb = sum(int(np.prod(v.shape)) for k, v in flat.items() if k[-1] == "embedding")
        return total, emb


def enable_compilation_cache(config: ml_collections.ConfigDict) -> None:
    """Keep XLA's compiled programs (in ``$GPT2_JAX_XLA_CACHE_DIR``, else the cache directory's ``xla/``).

    Sweeps and resumed runs compile the same programs again and again.
    """
    from gpt2_jax.data import paths

    directory = os.environ.get("GPT2_JAX_XLA_CACHE_DIR") or str(paths.cache_dir(config.data.cache_dir) / "xla")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
