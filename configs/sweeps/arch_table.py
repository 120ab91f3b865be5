"""T5 Table 2 in miniature: which architecture transduces sequences best at matched compute?

Hypothesis (Raffel et al. 2020, T5, section 3.2 and Table 2): at matched FLOPs
(an L+L encoder-decoder costs about what an L-layer decoder-only model costs)
the ranking is encoder-decoder >= shared encoder-decoder > prefix LM >> causal
LM, and most of the gap is the causal mask over the input: T5's prefix LM beats
its causal LM by +7.1 GLUE / +17.8 SQuAD while the shared encoder-decoder beats
the prefix LM by only +1.0 / +1.7.  Halving the encoder-decoder (L/2+L/2)
"significantly hurt".  Here the tasks are synthetic transductions (a mixture of
copy, reverse and sort) with the operation token before ("op-first") or after
("op-last") the string: with op-last a causal model must encode every input
symbol before it knows what to do with it, so the causal-LM deficit should be
largest there.  Deeper decoder-only and prefix-LM models (T5's "2L") match the
encoder-decoder's parameters.  Metrics: exact match (a whole output right,
equal to greedy decoding's) and token accuracy on held-out strings of the
training lengths, and exact match on longer strings (out of length
distribution).

Alignment: in an encoder-decoder, output i and input i both sit at position i;
in a single stack output i sits at n + 1 + i for an input of n symbols.  Cells
that test whether that is the encoder-decoder's edge: the single stacks with
their target positions restarted at 0 (``data.target_positions=restart``),
and all three architectures with rotary positions and with T5's relative
bias (cross-attention then has no positions at all).

``:cpu`` tunes the learning rate (1e-3, 3e-3, 1e-2) per cell on seed 0's
validation exact match, runs seeds 1-4 at each cell's choice, trains 1,800
steps and reports a test split apart from the validation split that chose the
rate.  CPU budget: 30 cells x 3 rates on seed 0, then 30 cells x 4 seeds: 210
runs of 1,800 steps, 3-13 minutes each at ``--parallel=2``, about 12 hours on
two cores (resumable: run it in parts).  ``:fixed_lr`` is the smaller protocol
(3e-3 for every cell, 600 steps, 3 seeds, the 14 cells without the position
variants, scored on validation): about 1.5 hours.
"""

import dataclasses

from configs import synthetic
from experiments import sweeps
from experiments.sweeps import Metric, Sweep, apply, describe_lengths
from gpt2_jax import flops


def get_sweep(variant: str = "cpu") -> Sweep:
    base = synthetic.get_config("copy,reverse,sort")
    s = base.data.synthetic
    s.alphabet_size, s.min_len, s.max_len, s.ood_min_len, s.ood_max_len = 16, 12, 28, 29, 34
    s.num_train, s.num_eval = 20000, 500
    base.data.seq_len = 72  # the longest out-of-distribution example fits every architecture
    base.model.emb_dim, base.model.num_heads = 64, 4
    base.data.decoder_only_loss = "continuation"  # every architecture puts loss on the same target tokens
    base.batch_size, base.eval_batch_size = 32, 100
    base.optimizer.learning_rate, base.optimizer.min_learning_rate = 3e-3, 3e-4
    base.optimizer.warmup_steps = 50
    base.mesh.data = 1
    layers, steps, seeds, tasks = 2, 1800, [0, 1, 2, 3, 4], ["first", "last"]
    rates = ["1e-3", "3e-3", "1e-2"]
    if variant in ("fixed_lr", "quick"):
        steps, seeds, rates = 600, [0, 1, 2], []
        if variant == "quick":  # `make run`: about ten minutes on two CPU cores
            steps, tasks = 300, ["last"]
    elif variant == "full":  # T5's base shape, for an accelerator
        layers, steps, rates = 12, 20000, ["1e-4", "3e-4", "1e-3"]
        base.model.emb_dim, base.model.num_heads, base.batch_size = 768, 12, 128
        base.model.dtype = "bfloat16"
    elif variant != "cpu":
        raise ValueError(f"unknown variant {variant!r}; use cpu, fixed_lr, quick or full")
    base.num_train_steps = steps
    base.eval_every_steps = base.checkpoint_every_steps = steps // 4
    half = max(layers // 2, 1)
    ed = {"model.arch": "encoder_decoder"}
    # T5's "2L" decoder-only has about an L+L encoder-decoder's parameters; with GPT-2 blocks
    # cross-attention adds a third to every decoder layer, so derive the depth that matches.
    lengths = describe_lengths(base)
    matched = flops.match_layers(
        sweeps.model_config(apply(base, {**ed, "model.num_layers": layers})),
        (lengths[1], lengths[0]),
        "decoder_only",
        (sum(lengths) - 1, 0),
        match="params",
    )
    deep = matched.config.num_layers
    two_l = dataclasses.replace(matched.config, num_layers=2 * layers)
    two_l_mismatch = (
        flops.count_params(flops.abstract_params(two_l, sum(lengths) - 1, 0))["total"] / matched.reference - 1
    )
    models = [
        (f"ED {layers}+{layers}", {**ed, "model.num_layers": layers}),
        (f"ED shared {layers}+{layers}", {**ed, "model.num_layers": layers, "model.share_encoder_decoder": True}),
        (f"ED {half}+{half}", {**ed, "model.num_layers": half}),
        (f"DO {layers}", {"model.arch": "decoder_only", "model.num_layers": layers}),
        (f"PLM {layers}", {"model.arch": "prefix_lm", "model.num_layers": layers}),
        (f"DO {deep}", {"model.arch": "decoder_only", "model.num_layers": deep}),
        (f"PLM {deep}", {"model.arch": "prefix_lm", "model.num_layers": deep}),
    ]
    if variant == "quick":
        models = [m for m in models if not m[0].startswith(("ED shared", f"ED {half}+", f"PLM {deep}"))]
    if rates:  # the alignment cells
        restart = {"data.target_positions": "restart", "model.num_layers": layers}
        models += [
            (f"DO {layers} restart", {"model.arch": "decoder_only", **restart}),
            (f"PLM {layers} restart", {"model.arch": "prefix_lm", **restart}),
        ]
        for scheme in ("rope", "t5_bias"):
            for name, arch in (
                (f"ED {layers}+{layers}", "encoder_decoder"),
                (f"DO {layers}", "decoder_only"),
                (f"PLM {layers}", "prefix_lm"),
            ):
                models.append(
                    (f"{name} {scheme}", {"model.arch": arch, "model.num_layers": layers, "model.positional": scheme})
                )
    task_axis = [(f"op-{t}", {"data.synthetic.op_position": t}) for t in tasks]
    axes = [("task", task_axis), ("model", models)]
    # Tuned sweeps choose on validation and report test; the fixed-rate protocol reads validation.
    scored = "test" if rates else "validation"
    tuning = {}
    if rates:
        lr_axis = [
            (r, {"optimizer.learning_rate": float(r), "optimizer.min_learning_rate": float(r) / 10}) for r in rates
        ]
        axes.append(("lr", lr_axis))
        tuning = dict(
            tune="lr",
            tune_seeds=[0],
            tune_metric=Metric("validation exact match %", "results.eval.validation.exact_match", scale=100),
        )
    return Sweep(
        name="arch_table",
        hypothesis=__doc__,
        base=base,
        axes=axes,
        seeds=seeds,
        metrics=[
            Metric(f"{scored} exact match %", f"results.eval.{scored}.exact_match", scale=100),
            Metric(f"{scored} token accuracy %", f"results.eval.{scored}.accuracy", scale=100),
            Metric("longer strings: exact match %", "results.eval.test_ood.exact_match", scale=100),
            Metric("validation loss", "results.final_eval_loss", higher_is_better=False),
            *(
                Metric(f"{op}: {what}", f"results.eval.{scored}_{op}.{field}", scale=100)
                for op in ("copy", "reverse", "sort")
                for what, field in (("exact match %", "exact_match"), ("token accuracy %", "accuracy"))
            ),
        ],
        reference={"model": f"ED {layers}+{layers}"},
        **tuning,
        matched=(
            f"FLOPs per example: ED {layers}+{layers} vs DO/PLM {layers} (T5's 'M'); parameters: ED {layers}+{layers} "
            f"vs DO/PLM {deep} (T5's '2P'; {deep} layers is the decoder-only depth closest in parameters, "
            f"{matched.mismatch:+.1%}; the literal 2L = {2 * layers} layers would be {two_l_mismatch:+.1%}, since "
            "a decoder layer with cross-attention holds 16D^2 weights against 12D^2, so L+L = 2L x 7/6, T5's "
            "'about 10%'). Same data order, steps, batch and optimizer; loss on the same target tokens "
            "for every architecture" + ("; learning rate tuned per cell." if rates else "; one learning rate.")
        ),
        example_lengths=lengths,
    )
