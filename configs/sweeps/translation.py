"""Translation by concatenation (Liu et al. 2018, Gao et al. 2022) against an encoder-decoder, on Multi30k de-en.

Hypothesis: a decoder-only model translates by reading ``source <sep> target``
(Liu et al. 2018's Transformer-Decoder reached *better* test perplexity than
the encoder-decoder on WikiSum, 2.22 vs 2.47, with slightly lower ROUGE-L,
33.6 vs 34.2), and with a fully visible (prefix) source it matches an
encoder-decoder on supervised translation (Gao et al. 2022; Zhang et al. 2022),
while a causal mask over the source and a language-modelling loss on the source
hurt, most at small scale (Zhang et al. 2022).  T5 Table 2 (EnDe BLEU): encoder-
decoder 26.98 > prefix LM 26.43 > causal LM 25.09.  Cells: encoder-decoder
L+L; decoder-only L with loss on the target only (a causal mask over the
source: Zhang et al.'s first factor against the prefix-LM); decoder-only L
with loss on source and target (Liu et al.; its loss is a mean over all
weighted tokens, about twice the target's, so its gradient is about half the
size; AdamW divides each update by the gradient's running RMS, so a constant
factor cancels and what differs is the direction, shared per token between
source and target: the treatment itself.  Global-norm clipping at 1.0 is
what does not cancel: it binds less often on the smaller gradient, and each
run logs the fraction of steps it clipped, ``clipped_fraction`` in
``metrics.jsonl``); prefix-LM L.  Metrics: BLEU
and chrF (sacrebleu) on test_2016_flickr with greedy decoding and with a beam
of 4, and target-token loss on validation.  The learning rate (3e-4, 1e-3,
3e-3) is tuned per cell on seed 0's validation loss; seeds 1 and 2 run at the
chosen rate.

CPU budget (``:cpu``): 4 cells x 3 learning rates on seed 0, then 4 cells x 2
seeds: 20 runs of 1,500 steps (evaluated every 250, to see whether the
validation loss has flattened), about 20 minutes each on two cores, 4 hours at
``--parallel=2``.  ``:fixed_lr`` (1e-3 for every cell, 400 steps, greedy
decoding; ``--seeds=0,1``): about 20 minutes.
"""

from configs import multi30k
from experiments.sweeps import Metric, Sweep


def get_sweep(variant: str = "cpu") -> Sweep:
    base = multi30k.get_config("full" if variant == "full" else "cpu")
    base.mesh.data = 1
    rates, decode = ["3e-4", "1e-3", "3e-3"], ["test", "test:beam4"]
    if variant == "cpu":
        base.eval_every_steps = base.checkpoint_every_steps = 250
    elif variant == "fixed_lr":  # the short protocol: 1e-3 for every cell, 400 steps, greedy decoding
        base.num_train_steps = 400
        base.eval_every_steps = base.checkpoint_every_steps = 200
        rates, decode = [], ["test"]
    elif variant != "full":
        raise ValueError(f"unknown variant {variant!r}; use cpu, fixed_lr or full")
    L = base.model.num_layers
    models = [
        (f"ED {L}+{L}", {"model.arch": "encoder_decoder"}),
        (f"DO {L}, loss on target", {"model.arch": "decoder_only", "data.decoder_only_loss": "continuation"}),
        (f"DO {L}, loss on all (Liu)", {"model.arch": "decoder_only", "data.decoder_only_loss": "all"}),
        (f"PLM {L}", {"model.arch": "prefix_lm"}),
    ]
    axes = [("model", models)]
    metrics = [
        Metric("test BLEU, greedy", "decoded.test.bleu"),
        Metric("test chrF, greedy", "decoded.test.chrf"),
        Metric("validation target loss", "results.final_eval_loss", higher_is_better=False),
    ]
    tuning = {}
    if rates:
        lr = [(r, {"optimizer.learning_rate": float(r), "optimizer.min_learning_rate": float(r) / 10}) for r in rates]
        axes.append(("lr", lr))
        metrics[:0] = [Metric("test BLEU, beam 4", "decoded.test:beam4.bleu")]
        metrics.insert(2, Metric("test chrF, beam 4", "decoded.test:beam4.chrf"))
        tuning = dict(
            tune="lr",
            tune_seeds=[0],
            tune_metric=Metric("best validation target loss", "results.best_eval_loss", higher_is_better=False),
        )
    return Sweep(
        name="translation",
        hypothesis=__doc__,
        base=base,
        axes=axes,
        seeds=[0, 1, 2],
        metrics=metrics,
        reference={"model": f"DO {L}, loss on target"},
        **tuning,
        matched=(
            f"FLOPs per pair (ED {L}+{L} ~ DO {L}), steps, batch, packing, data order and optimizer; "
            + ("learning rate tuned per cell" if rates else "one learning rate")
            + "; every model is scored on the same target tokens. Not matched: the loss-on-all cell's loss also "
            "covers the source"
        ),
        decode=decode,
        # Mean SentencePiece tokens of a training pair, (source + sep, target + eos): vocabulary 2000 (cpu) or
        # 8000 (full), measured on Multi30k's training split.
        example_lengths=(16, 15) if variant == "full" else (21, 19),
    )
