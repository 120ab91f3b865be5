"""Wang et al. 2022, finding 1: for plain language modelling, does a causal decoder beat the alternatives?

Hypothesis (Wang et al. 2022, "What language model architecture and pretraining
objective work best for zero-shot generalization?", Table 3): after
self-supervised pretraining alone, a causal decoder trained with a full
language-modelling loss is the best zero-shot model (EAI-Eval 44.2) ahead of
the non-causal (prefix-LM) decoder (43.5) and the encoder-decoder (39.9), both
trained with T5's arbitrary-cut prefix objective.  One reason: prefix-LM and
encoder-decoder put loss on about half the tokens.  Here, on tiny Shakespeare
(characters), every architecture trains on the same random windows for the
same steps; the prefix-LM and encoder-decoder cut each window at a uniformly
random point (T5 section 3.2.3).  Metric: bits per character on the second half
of held-out windows given the first half, scored identically for all.
"""

import math

from configs import shakespeare_char
from experiments.sweeps import Metric, Sweep


def get_sweep(variant: str = "cpu") -> Sweep:
    base = shakespeare_char.get_config("cpu")
    base.mesh.data = 1
    base.data.random_cut = True  # prefix-LM / encoder-decoder: arbitrary cuts; evaluation cuts at the middle
    base.data.cut_fraction = 0.5
    layers, steps = 4, 1000
    if variant == "full":
        base = shakespeare_char.get_config("gpu")
        base.data.random_cut, base.data.cut_fraction = True, 0.5
        layers, steps = 6, 5000
    elif variant != "cpu":
        raise ValueError(f"unknown variant {variant!r}; use cpu or full")
    base.num_train_steps = steps
    base.eval_every_steps = base.checkpoint_every_steps = steps // 4
    models = [
        (f"DO {layers} (full LM)", {"model.arch": "decoder_only", "model.num_layers": layers}),
        (f"PLM {layers} (prefix LM)", {"model.arch": "prefix_lm", "model.num_layers": layers}),
        (f"ED {layers}+{layers} (prefix LM)", {"model.arch": "encoder_decoder", "model.num_layers": layers}),
    ]
    return Sweep(
        name="continuation",
        hypothesis=__doc__,
        base=base,
        axes=[("model", models)],
        seeds=[0, 1, 2],
        metrics=[
            Metric(
                "continuation bits/char",
                "results.eval.continuation.loss",
                higher_is_better=False,
                scale=1 / math.log(2),
            ),
            Metric(
                "prefix-LM-scored bits/char",
                "results.eval.validation.loss",
                higher_is_better=False,
                scale=1 / math.log(2),
            ),
            Metric("tokens with loss (M)", "results.loss_tokens_seen", scale=1e-6),
        ],
        matched=(
            f"compute per window (T5's 'M': ED {layers}+{layers} ~ DO {layers}), steps, batch, windows and optimizer; "
            "the prefix objectives put loss on fewer tokens, as in Wang et al."
        ),
        # FLOPs per example of a window cut in the middle (the encoder-decoder's rows are padded to the whole
        # context for random cuts; that padding is not counted).
        example_lengths=(base.data.seq_len // 2, base.data.seq_len - base.data.seq_len // 2 + 1),
    )
