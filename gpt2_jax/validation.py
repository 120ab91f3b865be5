"""Config validation before anything is built.

:func:`validate` needs no JAX backend (a multi-host run calls it before
``jax.distributed.initialize()``); :func:`validate_on_backend` holds the checks
that start one.  Each check raises :class:`~gpt2_jax.errors.ConfigError` with
a message that names the field and says what to change.
"""

from __future__ import annotations

from gpt2_jax.attention import IMPLEMENTATIONS as ATTENTION_IMPLS
from gpt2_jax.batch import ARCHITECTURES
from gpt2_jax.data import DATASETS, PAIRED_DATASETS
from gpt2_jax.data.tokenizers import NAMES as TOKENIZERS
from gpt2_jax.errors import ConfigError
from gpt2_jax.model import DTYPES, REMAT_POLICIES
from gpt2_jax.optim import SCHEDULES

LOSS_IMPLS = ("chunked", "fused")
GELU_IMPLS = ("autodiff", "recompute")
POSITIONALS = ("learned", "none", "rope", "t5_bias")
OBJECTIVES = ("auto", "lm", "mlm", "span_corruption", "seq2seq", "mixture")
DECODER_ONLY_LOSSES = ("auto", "all", "continuation")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(value, choices, field: str) -> None:
    _require(value in choices, f"{field}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}")


def _validate_processes(config) -> None:
    explicit = [
        f"config.{k}"
        for k, unset in (("coordinator_address", ""), ("num_processes", 0), ("process_id", -1))
        if config[k] != unset
    ]
    if not config.distributed:
        _require(not explicit, f"{', '.join(explicit)} only apply to a multi-host run: set config.distributed=True")
        return
    _require(
        not config.coordinator_address or ":" in config.coordinator_address,
        f"config.coordinator_address={config.coordinator_address!r} must be 'host:port' (process 0's host)",
    )
    _require(
        config.num_processes >= 0,
        f"config.num_processes must be >= 1 (0 = from the cluster), got {config.num_processes}",
    )
    if config.num_processes and config.process_id >= 0:
        _require(
            config.process_id < config.num_processes,
            f"config.process_id={config.process_id} must be below config.num_processes={config.num_processes}",
        )


def xla_options(spec: str, check_names: bool = False) -> dict[str, bool | int | float | str]:
    """``config.xla_options`` (``"name=value,..."``, XLA's debug options) as ``jax.jit``'s ``compiler_options``.

    ``true``/``false`` become booleans and numbers numbers.  With
    ``check_names`` a trivial program is compiled with the options, so that a
    name XLA does not know fails here, not at the first train step.  Options of
    another backend (``xla_gpu_*`` on a CPU) are accepted and ignored by XLA.
    """
    options: dict[str, bool | int | float | str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = (part.strip() for part in item.partition("="))
        _require(
            bool(sep and name and value),
            f"config.xla_options: {item!r} is not name=value (e.g. 'xla_gpu_enable_triton_gemm=false')",
        )
        if value.lower() in ("true", "false"):
            options[name] = value.lower() == "true"
            continue
        for kind in (int, float):
            try:
                options[name] = kind(value)
                break
            except ValueError:
                continue
        else:
            options[name] = value
    if check_names and options:
        import jax
        import jax.numpy as jnp

        try:
            jax.jit(lambda: jnp.zeros(()), compiler_options=options).lower().compile()
        except jax.errors.JaxRuntimeError as e:
            raise ConfigError(f"config.xla_options={spec!r}: {e}; see XLA's debug options for the names") from e
    return options


def validate_on_backend(config) -> None:
    """The checks that start JAX's backend, which a multi-host run may do only after ``jax.distributed.initialize()``.

    :func:`validate` leaves the backend alone; the experiment calls this before it builds anything.
    """
    import jax

    if config.model.attention_impl == "cudnn":
        _require(
            jax.default_backend() == "gpu",
            f"config.model.attention_impl='cudnn' needs a GPU, but JAX runs on {jax.default_backend()!r}; use 'xla'",
        )
    xla_options(config.xla_options, check_names=True)


def validate(config) -> None:
    """Check every field of a run config that needs no JAX backend; raise ConfigError on the first problem."""
    m, d, o = config.model, config.data, config.optimizer
    _one_of(m.arch, ARCHITECTURES, "config.model.arch")
    for field in ("num_layers", "num_heads", "emb_dim"):
        _require(m[field] >= 1, f"config.model.{field} must be >= 1, got {m[field]}")
    _require(
        m.emb_dim % m.num_heads == 0,
        f"config.model.num_heads={m.num_heads} does not divide config.model.emb_dim={m.emb_dim}; "
        "pick a head count that divides the width",
    )
    for field in ("num_encoder_layers", "mlp_dim", "max_len", "vocab_size"):
        _require(m[field] >= 0, f"config.model.{field} must be >= 0 (0 = automatic), got {m[field]}")
    _require(m.pad_vocab_to >= 1, f"config.model.pad_vocab_to must be >= 1 (1 = no padding), got {m.pad_vocab_to}")
    _require(
        m.loss_chunk_len >= 0,
        f"config.model.loss_chunk_len must be >= 0 (0 = the whole sequence at once), got {m.loss_chunk_len}",
    )
    _require(0.0 <= m.dropout_rate < 1.0, f"config.model.dropout_rate must be in [0, 1), got {m.dropout_rate}")
    _one_of(m.dtype, tuple(DTYPES), "config.model.dtype")
    _one_of(m.attention_impl, ATTENTION_IMPLS, "config.model.attention_impl")
    _one_of(m.loss_impl, LOSS_IMPLS, "config.model.loss_impl")
    _one_of(m.gelu_impl, GELU_IMPLS, "config.model.gelu_impl")
    _one_of(m.remat_policy, tuple(REMAT_POLICIES), "config.model.remat_policy")
    _one_of(m.positional, POSITIONALS, "config.model.positional")
    if m.share_encoder_decoder:
        _require(
            m.arch == "encoder_decoder",
            f"config.model.share_encoder_decoder=True needs arch='encoder_decoder', not {m.arch!r}",
        )
        _require(
            m.num_encoder_layers in (0, m.num_layers),
            "config.model.share_encoder_decoder=True needs num_encoder_layers == num_layers "
            f"(got {m.num_encoder_layers} and {m.num_layers}); set num_encoder_layers=0",
        )

    _validate_processes(config)
    xla_options(config.xla_options)
    _one_of(d.dataset, DATASETS, "config.data.dataset")
    _one_of(d.tokenizer, TOKENIZERS, "config.data.tokenizer")
    _one_of(d.objective, OBJECTIVES, "config.data.objective")
    if d.dataset == "text":
        _require(
            d.objective != "seq2seq",
            "config.data.objective='seq2seq' needs paired data (dataset multi30k, pairs or synthetic)",
        )
        objective = d.objective if d.objective != "auto" else ("mlm" if m.arch == "encoder_only" else "lm")
        if m.arch == "encoder_only":
            _require(
                objective == "mlm",
                "config.model.arch='encoder_only' is bidirectional and cannot generate a continuation; "
                "set config.data.objective='mlm' (or 'auto')",
            )
        else:
            _require(
                objective != "mlm",
                f"config.data.objective='mlm' needs config.model.arch='encoder_only', not {m.arch!r}",
            )
    elif d.dataset in PAIRED_DATASETS:
        _require(
            d.objective in ("auto", "seq2seq"),
            f"dataset {d.dataset!r} is paired data, trained as seq2seq; set config.data.objective='auto'",
        )
    _require(
        0.0 <= d.mixture_full_lm_share <= 1.0,
        f"config.data.mixture_full_lm_share must be in [0, 1], got {d.mixture_full_lm_share}",
    )
    _one_of(d.decoder_only_loss, DECODER_ONLY_LOSSES, "config.data.decoder_only_loss")
    _require(d.seq_len >= 2, f"config.data.seq_len must be >= 2, got {d.seq_len}")
    _require(0.0 < d.train_fraction < 1.0, f"config.data.train_fraction must be in (0, 1), got {d.train_fraction}")
    _require(0.0 < d.cut_fraction < 1.0, f"config.data.cut_fraction must be in (0, 1), got {d.cut_fraction}")
    _require(0.0 < d.mask_rate < 1.0, f"config.data.mask_rate must be in (0, 1), got {d.mask_rate}")
    _require(0.0 < d.noise_density < 1.0, f"config.data.noise_density must be in (0, 1), got {d.noise_density}")
    _require(
        d.mean_noise_span_length >= 1,
        f"config.data.mean_noise_span_length must be >= 1, got {d.mean_noise_span_length}",
    )
    _require(d.num_sentinels >= 0, f"config.data.num_sentinels must be >= 0, got {d.num_sentinels}")
    if d.objective == "span_corruption":
        _require(
            d.num_sentinels > 0, "config.data.objective='span_corruption' needs config.data.num_sentinels > 0 (T5: 100)"
        )
    if d.tokenizer == "sentencepiece":
        _require(d.vocab_size >= 8, f"config.data.vocab_size must be >= 8 for sentencepiece, got {d.vocab_size}")
    _require(m.vector_dim >= 0, f"config.model.vector_dim must be >= 0 (0 = from the data), got {m.vector_dim}")

    for field in ("num_train_steps", "batch_size", "eval_batch_size", "log_every_steps", "max_checkpoints_to_keep"):
        _require(config[field] >= 1, f"config.{field} must be >= 1, got {config[field]}")
    for field in ("eval_every_steps", "checkpoint_every_steps"):
        _require(config[field] >= 0, f"config.{field} must be >= 0 (0 = only at the end), got {config[field]}")

    _require(o.learning_rate > 0, f"config.optimizer.learning_rate must be > 0, got {o.learning_rate}")
    _require(
        0 <= o.min_learning_rate <= o.learning_rate,
        f"config.optimizer.min_learning_rate must be in [0, {o.learning_rate}] (the learning rate), "
        f"got {o.min_learning_rate}",
    )
    _require(o.warmup_steps >= 0, f"config.optimizer.warmup_steps must be >= 0, got {o.warmup_steps}")
    _one_of(o.schedule, SCHEDULES, "config.optimizer.schedule")
    _one_of(d.target_positions, ("continue", "restart"), "config.data.target_positions")
    _one_of(d.icl.x_distribution, ("uniform", "normal"), "config.data.icl.x_distribution")
    _one_of(d.facts.directions, ("forward", "both"), "config.data.facts.directions")
    _require(
        all(0 < float(f) < 1 for f in d.eval_cuts),
        f"config.data.eval_cuts must be fractions of the window in (0, 1), got {tuple(d.eval_cuts)}",
    )
    _require(
        o.decay_steps >= 0, f"config.optimizer.decay_steps must be >= 0 (0 = num_train_steps), got {o.decay_steps}"
    )
    for field in ("b1", "b2"):
        _require(0.0 <= o[field] < 1.0, f"config.optimizer.{field} must be in [0, 1), got {o[field]}")
    _require(o.eps > 0, f"config.optimizer.eps must be > 0, got {o.eps}")
    _require(o.weight_decay >= 0, f"config.optimizer.weight_decay must be >= 0, got {o.weight_decay}")
    _require(o.grad_clip_norm >= 0, f"config.optimizer.grad_clip_norm must be >= 0 (0 = off), got {o.grad_clip_norm}")
    _require(o.grad_accum_steps >= 1, f"config.optimizer.grad_accum_steps must be >= 1, got {o.grad_accum_steps}")
    _require(
        config.batch_size % o.grad_accum_steps == 0,
        f"config.batch_size={config.batch_size} is not divisible by "
        f"config.optimizer.grad_accum_steps={o.grad_accum_steps}",
    )
