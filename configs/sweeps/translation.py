"""Translation by concatenation (Liu et al. 2018, Gao et al. 2022) against an encoder-decoder, on Multi30k de-en.

Hypothesis: a decoder-only model translates by reading ``source <sep> target``
(Liu et al. 2018's Transformer-Decoder reached *better* test perplexity than
the encoder-decoder on WikiSum, 2.22 vs 2.47, with slightly lower ROUGE-L,
33.6 vs 34.2), and with a fully visible (prefix) source it matches an
encoder-decoder on supervised translation (Gao et al. 2022; Zhang et al. 2022),
while a causal mask over the source and a language-modelling loss on the source
hurt, most at small scale (Zhang et al. 2022).  T5 Table 2 (EnDe BLEU): encoder-
decoder 26.98 > prefix LM 26.43 > causal LM 25.09.  Cells: encoder-decoder
L+L; decoder-only L with loss on the target only; decoder-only L with loss on
source and target (Liu et al.); prefix-LM L.  Metrics: BLEU and chrF
(sacrebleu, greedy decoding) on test_2016_flickr and target-token loss on
validation.
"""

from configs import multi30k
from experiments.sweeps import Metric, Sweep


def get_sweep(variant: str = "cpu") -> Sweep:
    base = multi30k.get_config("full" if variant == "full" else "cpu")
    base.mesh.data = 1
    if variant == "cpu":
        base.num_train_steps = 400
        base.eval_every_steps = base.checkpoint_every_steps = 200
    elif variant != "full":
        raise ValueError(f"unknown variant {variant!r}; use cpu or full")
    L = base.model.num_layers
    models = [
        (f"ED {L}+{L}", {"model.arch": "encoder_decoder"}),
        (f"DO {L}, loss on target", {"model.arch": "decoder_only", "data.decoder_only_loss": "continuation"}),
        (f"DO {L}, loss on all (Liu)", {"model.arch": "decoder_only", "data.decoder_only_loss": "all"}),
        (f"PLM {L}", {"model.arch": "prefix_lm"}),
    ]
    return Sweep(
        name="translation",
        hypothesis=__doc__,
        base=base,
        axes=[("model", models)],
        seeds=[0, 1, 2],
        metrics=[
            Metric("test BLEU", "decoded.test.bleu"),
            Metric("test chrF", "decoded.test.chrf"),
            Metric("validation target loss", "results.final_eval_loss", higher_is_better=False),
        ],
        matched=(
            f"FLOPs per pair (ED {L}+{L} ~ DO {L}), steps, batch, packing and optimizer; every model is scored on "
            "the same target tokens"
        ),
        decode=["test"],
    )
