"""Sample from a trained run: ``python -m gpt2_jax.sample --workdir=DIR --prompt="..."``.

Loads the latest checkpoint of any generative run and prints continuations
(translations for sequence-to-sequence runs: the prompt is the source).  The
run's flags (``--mesh``, ``--distributed``): :mod:`gpt2_jax.run_flags`.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags

from gpt2_jax import run_flags
from gpt2_jax.errors import UserError
from gpt2_jax.generation import complete

_PROMPT = flags.DEFINE_multi_string("prompt", ["\n"], "Prompt (or source sentence); repeat for a batch.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = all).")
_BEAM = flags.DEFINE_integer("beam_size", 0, "Beam search with this many beams instead of sampling (0 = off).")
_ALPHA = flags.DEFINE_float("alpha", 0.6, "Beam search length penalty (Wu et al. 2016).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_NUM = flags.DEFINE_integer("num_samples", 1, "Samples per prompt.")


def main(argv: list[str]) -> None:
    del argv
    try:
        run = run_flags.load_run()
        for i in range(_NUM.value):
            outputs = complete(
                run,
                _PROMPT.value,
                _MAX_NEW.value,
                _TEMPERATURE.value,
                _TOP_K.value,
                _TOP_P.value,
                _BEAM.value,
                _ALPHA.value,
                _SEED.value + i,
            )
            if jax.process_index() > 0:  # on several hosts every one decodes its rows; process 0 prints them all
                continue
            for prompt, text in zip(_PROMPT.value, outputs, strict=True):
                print(f"--- {prompt!r}\n{text}" if len(_PROMPT.value) > 1 or _NUM.value > 1 else text)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
