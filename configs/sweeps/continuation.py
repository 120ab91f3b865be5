"""Wang et al. 2022, finding 1: for plain language modelling, does a causal decoder beat the alternatives?

Hypothesis (Wang et al. 2022, "What language model architecture and pretraining
objective work best for zero-shot generalization?", Table 3): after
self-supervised pretraining alone, a causal decoder trained with a full
language-modelling loss is the best zero-shot model (EAI-Eval 44.2) ahead of
the non-causal (prefix-LM) decoder (43.5) and the encoder-decoder (39.9), both
trained with T5's arbitrary-cut prefix objective.  One reason: prefix-LM and
encoder-decoder put loss on about half the tokens.  Here, on tiny Shakespeare
(characters), every architecture trains on the same random windows for the
same steps; the prefix objectives cut each window at a uniformly random point
(T5 section 3.2.3).  Two cells separate objective from architecture: the
decoder-only model on the same random-cut loss (loss on the continuation only),
and the prefix-LM on a mixture (half of the rows cut after their first token,
so they carry a full-LM loss; UL2's remedy).  Metric: bits per character of
the continuation after cuts at 1/8, 1/4, 1/2, 3/4 and 7/8 of held-out windows,
scored identically for all; the table's main column is the middle cut.  The
learning rate is tuned per cell on seed 0's validation loss; seeds 1 and 2 run
at each cell's chosen rate.

``:corpus=captions`` runs the same comparison on another kind of text: the
English side of Multi30k's training captions, as one text corpus.

CPU budget (``:cpu``): 5 cells x 3 learning rates on seed 0, then 5 cells x 2
seeds at the chosen rates: 25 runs of 1,000 steps, 42 minutes on two cores for
tiny Shakespeare.  ``:quick`` (200 steps, two learning rates, for a first look
and the pipeline): about 20 minutes.
"""

import math

from configs import shakespeare_char
from experiments.sweeps import Curve, Metric, Sweep
from gpt2_jax.data.datasets import cut_tokens

CUTS = (0.125, 0.25, 0.5, 0.75, 0.875)


def get_sweep(variant: str = "cpu") -> Sweep:
    size, _, corpus = variant.partition(":")
    size = size or "cpu"
    if size not in ("cpu", "quick", "full"):
        raise ValueError(f"unknown variant {variant!r}; use cpu, quick or full, optionally with :corpus=captions")
    base = shakespeare_char.get_config("gpu" if size == "full" else "cpu")
    base.mesh.data = 1
    base.data.cut_fraction = 0.5
    base.data.eval_cuts = CUTS
    if corpus == "corpus=captions":
        base.data.corpus = "multi30k/train.en.gz"
    elif corpus:
        raise ValueError(f"unknown corpus option {corpus!r}; use corpus=captions")
    layers, steps = {"full": (6, 5000), "cpu": (4, 1000), "quick": (4, 200)}[size]
    base.num_train_steps = steps
    base.eval_every_steps = base.checkpoint_every_steps = steps // 4
    random_cut = {"data.random_cut": True}
    models = [
        (f"DO {layers} (full LM)", {"model.arch": "decoder_only"}),
        (
            f"DO {layers} (random-cut loss)",
            {"model.arch": "decoder_only", "data.decoder_only_loss": "continuation", **random_cut},
        ),
        (f"PLM {layers} (prefix LM)", {"model.arch": "prefix_lm", **random_cut}),
        (f"PLM {layers} (mixture)", {"model.arch": "prefix_lm", "data.objective": "mixture"}),
        (f"ED {layers}+{layers} (prefix LM)", {"model.arch": "encoder_decoder", **random_cut}),
    ]
    models = [(label, {"model.num_layers": layers, **o}) for label, o in models]
    rates = ["1e-3", "3e-3", "1e-2"]  # around the 3e-3 tuned for the decoder-only CPU config
    if size == "quick":
        rates = ["3e-3", "1e-2"]
    lr_axis = [(r, {"optimizer.learning_rate": float(r), "optimizer.min_learning_rate": float(r) / 10}) for r in rates]
    bits = 1 / math.log(2)
    cut_metrics = [
        (
            f,
            Metric(
                f"bits/char at cut {f:g}",
                f"results.eval.continuation_cut_{cut_tokens(f, base.data.seq_len)}.loss",
                higher_is_better=False,
                scale=bits,
            ),
        )
        for f in CUTS
    ]
    middle = dict(cut_metrics)[0.5]
    return Sweep(
        name="continuation" + ("_captions" if corpus else ""),
        hypothesis=__doc__,
        base=base,
        axes=[("model", models), ("lr", lr_axis)],
        seeds=[0, 1, 2],
        metrics=[
            Metric("continuation bits/char (cut 1/2)", middle.path, higher_is_better=False, scale=bits),
            *(m for f, m in cut_metrics if f != 0.5),
            Metric("tokens with loss (M)", "results.loss_tokens_seen", scale=1e-6),
        ],
        tune="lr",
        tune_seeds=[0],
        tune_metric=Metric("validation loss", "results.best_eval_loss", higher_is_better=False),
        curve=Curve("cut position (fraction of the context)", cut_metrics, file="bits_per_cut.png"),
        reference={"model": f"DO {layers} (full LM)"},
        matched=(
            f"compute per window (T5's 'M': ED {layers}+{layers} ~ DO {layers}), steps, batch, windows, data "
            "order and optimizer; learning rate tuned per cell. Not matched: tokens with loss (the prefix "
            "objectives put loss on about half of each window, as in Wang et al.)"
        ),
        # FLOPs per example of a window cut in the middle (the encoder-decoder's rows are padded to the whole
        # context for random cuts; that padding is not counted).
        example_lengths=(base.data.seq_len // 2, base.data.seq_len - base.data.seq_len // 2 + 1),
    )
