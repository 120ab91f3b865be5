"""In-context learning with a prefix vs a causal mask (Ding et al. 2023, Table 1, scaled down).

Hypothesis (Ding et al. 2023, "CausalLM is not optimal for in-context
learning"): on in-context linear regression, a prefix LM (in-context examples
attend to each other both ways) reaches lower query error than a causal LM
(examples see only earlier examples) -- in all six of their cells, e.g.
unshared layers: query MSE 2.5e-3 vs 1.6e-2, which is 4.7e-4 vs 3.0e-3 of the
zero predictor's d/3 = 5.33.  Their setting: 24 layers, width 128, 2 heads,
x ~ U(-1, 1)^16, w ~ N(0, I), 40 examples and 20 queries per sequence with
loss on every query, 64,000 sequences, batch 64, 100 epochs (100,000 steps).
The CPU variant keeps their layout and inputs at d = 8, 20 examples, 10
queries, 4 layers of width 64; ``:full`` is their size.  We also run the
encoder-decoder (encoder over the examples, decoder over the queries), which
Ding et al. did not.  Queries attend to the examples and to earlier queries
(whose y is 0); Ding et al. keep queries independent.

Metric: query MSE on held-out sequences relative to the zero predictor's
(E[y^2] = d/3): 1 is "predicts 0", 0 is exact.  The learning rate is tuned per
architecture on a validation split, on seeds 0 and 1 (two, since a run can sit
on a plateau); seeds 2-4 run at the chosen rate.  The table reports a separate
test split.

CPU budget: 3 architectures x 3 learning rates x 2 seeds, then 3 x 3 seeds at
the chosen rates: 27 runs of 3,000 steps, about 5 hours on two cores (10-13
minutes a run).
"""

from configs import default
from experiments.sweeps import Metric, Sweep
from gpt2_jax.data import synthetic


def get_sweep(variant: str = "cpu") -> Sweep:
    base = default.get_config()
    base.mesh.data = 1
    base.data.dataset = "icl_regression"
    base.data.tokenizer = "byte"
    icl = base.data.icl
    icl.dim, icl.num_examples, icl.num_queries, icl.x_distribution = 8, 20, 10, "uniform"
    icl.num_train, icl.num_eval = 20000, 200
    base.model.num_layers, base.model.emb_dim, base.model.num_heads = 4, 64, 2
    base.batch_size, base.eval_batch_size = 64, 100
    base.num_train_steps = 3000
    base.optimizer.warmup_steps = 200
    learning_rates = ["3e-4", "1e-3", "3e-3"]
    if variant == "full":
        icl.dim, icl.num_examples, icl.num_queries = 16, 40, 20
        icl.num_train = 64000
        base.model.num_layers, base.model.emb_dim = 24, 128
        base.num_train_steps = 100000
    elif variant != "cpu":
        raise ValueError(f"unknown variant {variant!r}; use cpu or full")
    base.data.seq_len = icl.num_examples + icl.num_queries
    base.eval_every_steps = base.checkpoint_every_steps = base.num_train_steps // 5
    zero = synthetic.zero_predictor_mse(icl.dim, icl.noise, icl.x_distribution)
    L = base.model.num_layers
    models = [
        (f"PLM {L}", {"model.arch": "prefix_lm"}),
        (f"DO {L} (causal)", {"model.arch": "decoder_only"}),
        (f"ED {L}+{L}", {"model.arch": "encoder_decoder"}),
    ]
    lr_axis = [
        (lr, {"optimizer.learning_rate": float(lr), "optimizer.min_learning_rate": float(lr) / 10})
        for lr in learning_rates
    ]
    return Sweep(
        name="icl",
        hypothesis=__doc__,
        base=base,
        axes=[("model", models), ("lr", lr_axis)],
        seeds=[0, 1, 2, 3, 4],
        metrics=[
            Metric(
                "test query MSE / zero predictor's", "results.eval.test.loss", higher_is_better=False, scale=1 / zero
            ),
            Metric("test query MSE", "results.eval.test.loss", higher_is_better=False),
        ],
        tune="lr",
        tune_seeds=[0, 1],
        tune_metric=Metric(
            "validation query MSE / zero predictor's",
            "results.eval.validation.loss",
            higher_is_better=False,
            scale=1 / zero,
        ),
        reference={"model": f"PLM {L}"},
        matched=(
            "sequences, data order, steps, batch, optimizer and queries with loss; the same layers and width "
            "(the encoder-decoder has twice the layers and about twice the parameters); learning rate tuned per "
            "architecture on validation"
        ),
        example_lengths=(icl.num_examples, icl.num_queries),
    )
