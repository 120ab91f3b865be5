"""AdamW with linear warmup, then cosine decay to a floor (or a constant rate), and global-norm clipping."""

from __future__ import annotations

from typing import Any

import optax
from flax import traverse_util

EMBEDDING_NAMES = ("wte", "wpe", "encoder_wpe")


SCHEDULES = ("cosine", "constant")


def schedule(opt_config, num_train_steps: int) -> optax.Schedule:
    """Warmup from 0 to ``learning_rate``, then cosine to ``min_learning_rate`` at ``decay_steps`` (``"cosine"``),
    or ``learning_rate`` from then on (``"constant"``: the curve can be read at any step)."""
    decay_steps = opt_config.decay_steps or num_train_steps
    warmup = min(opt_config.warmup_steps, decay_steps)
    if opt_config.schedule == "constant":
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, opt_config.learning_rate, max(warmup, 1)),
                optax.constant_schedule(opt_config.learning_rate),
            ],
            [max(warmup, 1)],
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt_config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(decay_steps, warmup + 1),
        end_value=opt_config.min_learning_rate,
    )


def decay_mask(params: Any, decay_embeddings: bool = False) -> Any:
    """True for the parameters weight decay applies to.

    Matmul kernels decay; biases and LayerNorm scales/offsets never do;
    embeddings only when ``decay_embeddings`` (nanoGPT decays every 2-D tensor,
    which includes them).
    """
    flat = traverse_util.flatten_dict(params)

    def decays(path: tuple[str, ...]) -> bool:
        if path[-1] == "kernel":
            return True
        return decay_embeddings and path[-1] == "embedding" and path[-2] in EMBEDDING_NAMES

    return traverse_util.unflatten_dict({path: decays(path) for path in flat})


def make(opt_config, num_train_steps: int, params: Any) -> optax.GradientTransformation:
    """The optimizer for ``params`` (used only for its tree structure)."""
    mask = decay_mask(params, opt_config.decay_embeddings)
    chain = []
    if opt_config.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
    chain.append(
        optax.adamw(
            learning_rate=schedule(opt_config, num_train_steps),
            b1=opt_config.b1,
            b2=opt_config.b2,
            eps=opt_config.eps,
            weight_decay=opt_config.weight_decay,
            mask=mask,
        )
    )
    return optax.chain(*chain)
