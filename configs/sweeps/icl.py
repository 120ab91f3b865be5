"""In-context learning with a prefix vs a causal mask (Ding et al. 2023, Table 1, scaled down).

Hypothesis (Ding et al. 2023, "CausalLM is not optimal for in-context
learning"): on in-context linear regression, a prefix LM (in-context examples
attend to each other both ways) reaches lower query error than a causal LM
(examples see only earlier examples) -- in all six of their cells, e.g.
unshared layers: 2.5e-3 vs 1.6e-2.  Their setting: 24 layers, width 128,
d = 16, 40 examples; here d = 8, 20 examples, 4 layers, width 64.  We also run
the encoder-decoder (encoder over the examples, decoder reading the query),
which Ding et al. did not.  Metric: mean squared error of the query's y, over
the dimension d.
"""

from configs import default
from experiments.sweeps import Metric, Sweep


def get_sweep(variant: str = "cpu") -> Sweep:
    base = default.get_config()
    base.mesh.data = 1
    base.data.dataset = "icl_regression"
    base.data.tokenizer = "byte"
    base.data.icl.dim, base.data.icl.num_examples, base.data.icl.num_queries = 8, 20, 10
    base.data.icl.num_train, base.data.icl.num_eval = 20000, 200
    base.data.seq_len = 21
    base.model.num_layers, base.model.emb_dim, base.model.num_heads = 4, 64, 2
    base.batch_size, base.eval_batch_size = 64, 100
    base.num_train_steps = 3000
    base.optimizer.learning_rate, base.optimizer.min_learning_rate = 1e-3, 1e-4
    base.optimizer.warmup_steps = 200
    if variant == "full":
        base.data.icl.dim, base.data.icl.num_examples, base.data.icl.num_queries = 16, 40, 20
        base.data.icl.num_train = 64000
        base.model.num_layers, base.model.emb_dim = 24, 128
        base.num_train_steps = 100000
    elif variant != "cpu":
        raise ValueError(f"unknown variant {variant!r}; use cpu or full")
    base.eval_every_steps = base.checkpoint_every_steps = base.num_train_steps // 5
    L = base.model.num_layers
    models = [
        (f"PLM {L}", {"model.arch": "prefix_lm"}),
        (f"DO {L} (causal)", {"model.arch": "decoder_only"}),
        (f"ED {L}+{L}", {"model.arch": "encoder_decoder"}),
    ]
    return Sweep(
        name="icl",
        hypothesis=__doc__,
        base=base,
        axes=[("model", models)],
        seeds=[0, 1, 2],
        metrics=[
            Metric("query MSE / d", "results.final_eval_loss", higher_is_better=False, scale=1 / base.data.icl.dim),
        ],
        matched="steps, batch, sequences and optimizer; the same layers and width (ED has twice the layers)",
    )
