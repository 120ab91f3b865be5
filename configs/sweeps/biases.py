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
"[mask] is ATTR.".  Cells: causal LM and masked LM on 500 made-up facts;
metrics: exact match forward and reverse.
"""

import math

from configs import shakespeare_char
from experiments.sweeps import Metric, Sweep


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
        "data.facts.num_facts": 500,
        "data.seq_len": 64,
        "data.mask_rate": 0.5,  # masked LM: enough masking to learn to fill whole names
        "batch_size": 32,
        "num_train_steps": steps if variant == "cpu" else 2 * steps,
        "eval_every_steps": steps // 4,
        "checkpoint_every_steps": steps // 4,
    }
    setups = [
        ("causal LM, learned positions", {"model.arch": "decoder_only"}),
        ("causal LM, no positions", {"model.arch": "decoder_only", "model.positional": "none"}),
        ("masked LM, learned positions", {"model.arch": "encoder_only"}),
        ("masked LM, no positions", {"model.arch": "encoder_only", "model.positional": "none"}),
        ("facts: causal LM", {**facts, "model.arch": "decoder_only"}),
        ("facts: masked LM", {**facts, "model.arch": "encoder_only"}),
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
        ],
        matched=(
            "model size, steps, batch and optimizer within each part"
            + ("" if variant == "cpu" else "; facts runs train twice as many steps")
        ),
    )
