"""Inductive biases that only the causal mask has: position without position embeddings, and the reversal curse.

Hypotheses.  (a) Haviv et al. 2022, "Transformer language models without
positional encodings still learn positional information": a causal LM without
any position embedding is about as good as one with them, because the causal
mask itself reveals position (a token can count how many tokens it sees); a
bidirectional masked LM without position embeddings is permutation-invariant
and degrades badly.  Cells: causal LM and masked LM on tiny Shakespeare, with
and without learned position embeddings; metric: bits per character (for the
masked LM, on its masked characters).  (b) The reversal curse (Berglund et al.
2023; Wu, Yang & Wang 2024): a causal LM trained on "NAME is ATTR." answers
"NAME is" -> ATTR but not "ATTR is" -> NAME (near chance), while a
bidirectional masked LM trained on the same sentences can fill the name in
"[mask] is ATTR.".  Cells: causal LM and masked LM on 200 made-up facts,
trained until they answer forward (>= 90% exact match), each with a control
trained on both directions ("ATTR is NAME." too); metrics: exact match
forward and reverse, and Berglund et al.'s likelihood test: the rank of the
right name among all 200 by the model's likelihood (chance: 100.5).

Positions: learned, none, or rotary (RoPE) for both models.  The two models
are scored differently: the causal LM's bits/char over every next character,
the masked LM's over its masked characters (15% of them), so compare within
a model, not across.

CPU budget: 10 cells x 3 seeds, about 3 hours on two cores.
"""

import math

from configs import shakespeare_char
from experiments.sweeps import Metric, Sweep
from gpt2_jax.data import synthetic


def get_sweep(variant: str = "cpu") -> Sweep:
    base = shakespeare_char.get_config("cpu")
    base.mesh.data = 1
    steps = 1000 if variant == "cpu" else 5000
    if variant not in ("cpu", "full"):
        raise ValueError(f"unknown variant {variant!r}; use cpu or full")
    base.num_train_steps = steps
    base.eval_every_steps = base.checkpoint_every_steps = steps // 4
    facts = {
        "data.dataset": "facts",
        "data.facts.num_facts": 200,
        "data.seq_len": 64,
        "data.mask_rate": 0.5,  # masked LM: enough masking to learn to fill whole names
        "batch_size": 32,
        "num_train_steps": 3 * steps,
        "eval_every_steps": 3 * steps // 4,
        "checkpoint_every_steps": 3 * steps // 4,
    }
    both = {"data.facts.directions": "both"}
    setups = [
        ("causal LM, learned positions", {"model.arch": "decoder_only"}),
        ("causal LM, no positions", {"model.arch": "decoder_only", "model.positional": "none"}),
        ("causal LM, rope", {"model.arch": "decoder_only", "model.positional": "rope"}),
        ("masked LM, learned positions", {"model.arch": "encoder_only"}),
        ("masked LM, no positions", {"model.arch": "encoder_only", "model.positional": "none"}),
        ("masked LM, rope", {"model.arch": "encoder_only", "model.positional": "rope"}),
        ("facts: causal LM", {**facts, "model.arch": "decoder_only"}),
        ("facts: causal LM, both directions (control)", {**facts, **both, "model.arch": "decoder_only"}),
        ("facts: masked LM", {**facts, "model.arch": "encoder_only"}),
        ("facts: masked LM, both directions (control)", {**facts, **both, "model.arch": "encoder_only"}),
    ]
    bits = 1 / math.log(2)
    return Sweep(
        name="biases",
        hypothesis=__doc__,
        base=base,
        axes=[("setup", setups)],
        seeds=[0, 1, 2],
        metrics=[
            Metric(
                "bits/char (Shakespeare)",
                "results.eval.validation.loss",
                higher_is_better=False,
                scale=bits,
                skip="facts",
            ),
            Metric("facts: forward exact match %", "results.eval.validation.exact_match", scale=100, only="facts"),
            Metric("facts: reverse exact match %", "results.eval.reverse.exact_match", scale=100, only="facts"),
            Metric(
                "facts: reverse rank of the right name",
                "results.eval.reverse.ranking.rank_mean",
                higher_is_better=False,
                only="facts",
            ),
            Metric(
                "facts: forward rank of the right attribute",
                "results.eval.validation.ranking.rank_mean",
                higher_is_better=False,
                only="facts",
            ),
        ],
        matched=(
            "model size, steps, batch and optimizer within each part (the facts runs train three times the steps); "
            "positions learned, none or rotary change the parameters by the position table only"
        ),
        example_lengths_of=_example_lengths,
    )


def _example_lengths(config) -> tuple[int, int]:
    """(prefix, continuation) tokens of one training example: a Shakespeare window, or one statement."""
    masked = config.model.arch == "encoder_only"
    if config.data.dataset == "facts":
        name, attr = synthetic.facts(1, 0)[0]
        tokens = len(f"{name} is {attr}.")  # every made-up statement has the same length
        return (0, tokens) if masked else (1, tokens - 1)
    return (0, config.data.seq_len) if masked else (1, config.data.seq_len)
