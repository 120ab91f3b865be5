"""Does the causal decoder's lead in language modelling hold as models grow, or would the curves cross?

Hypothesis (Wang et al. 2022, Table 3; Kaplan et al. 2020, section 3 and
Figure 3): at matched compute per window the causal decoder trained with a
full LM loss beats the prefix-LM and the encoder-decoder trained with T5's
prefix objective (``configs/sweeps/continuation.py`` at one size).  Here the
three are trained at widths 64, 128 and 256 (4 layers, 4 heads; the
encoder-decoder 4+4), each at its own learning rate (3e-4 to 3e-2 in steps of
about 3x, chosen per cell on seed 0's validation loss: on 1e-3 to 1e-2 alone
the widest models chose 1e-3 and the narrowest 1e-2, the grid's edges), on
tiny Shakespeare characters with the
same windows, steps and batch.  The report draws bits per character of the
continuation after a cut in the middle of held-out windows against training
FLOPs on log axes, fits ``L = a * C^-b`` per architecture and states where the
fits would cross.  Three sizes fit a power law loosely: a crossing far beyond
the largest run is an extrapolation, not a finding.

CPU budget: 9 cells x 5 learning rates on seed 0, then 9 cells on seed 1: 54
runs of 1,000 steps, from about 1 minute (width 64) to 13 minutes (the width-256
encoder-decoder) a run at ``--parallel=2``; about 2.5 hours on two cores.
"""

import math

from configs import shakespeare_char
from experiments.sweeps import Metric, Sweep
from gpt2_jax.data.datasets import cut_tokens


def get_sweep(variant: str = "cpu") -> Sweep:
    if variant != "cpu":
        raise ValueError(f"unknown variant {variant!r}; use cpu")
    base = shakespeare_char.get_config("cpu")
    base.mesh.data = 1
    base.data.cut_fraction = 0.5
    base.data.eval_cuts = (0.5,)
    base.model.num_layers, base.model.num_heads = 4, 4
    base.num_train_steps = 1000
    base.eval_every_steps = base.checkpoint_every_steps = 250
    random_cut = {"data.random_cut": True}
    models = [
        ("DO 4 (full LM)", {"model.arch": "decoder_only"}),
        ("PLM 4 (prefix LM)", {"model.arch": "prefix_lm", **random_cut}),
        ("ED 4+4 (prefix LM)", {"model.arch": "encoder_decoder", **random_cut}),
    ]
    widths = [(f"width {w}", {"model.emb_dim": w}) for w in (64, 128, 256)]
    rates = ["3e-4", "1e-3", "3e-3", "1e-2", "3e-2"]
    lr_axis = [(r, {"optimizer.learning_rate": float(r), "optimizer.min_learning_rate": float(r) / 10}) for r in rates]
    cut = cut_tokens(0.5, base.data.seq_len)
    return Sweep(
        name="scaling",
        hypothesis=__doc__,
        base=base,
        axes=[("model", models), ("width", widths), ("lr", lr_axis)],
        seeds=[0, 1],
        metrics=[
            Metric(
                "continuation bits/char (cut 1/2)",
                f"results.eval.continuation_cut_{cut}.loss",
                higher_is_better=False,
                scale=1 / math.log(2),
            ),
            Metric("tokens with loss (M)", "results.loss_tokens_seen", scale=1e-6),
        ],
        tune="lr",
        tune_seeds=[0],
        tune_metric=Metric("validation loss", "results.best_eval_loss", higher_is_better=False),
        scaling="width",
        reference={"model": "DO 4 (full LM)"},
        matched=(
            "at each width: compute per window (ED 4+4 ~ DO 4), steps, batch, windows, data order and optimizer; "
            "learning rate tuned per cell. Not matched: tokens with loss (the prefix objective puts loss on about "
            "half of each window) and parameters (the encoder-decoder has about 2x)"
        ),
        example_lengths=(base.data.seq_len // 2, base.data.seq_len - base.data.seq_len // 2 + 1),
    )
