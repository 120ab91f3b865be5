"""Command line: ``python -m gpt2_jax.main --config=configs/NAME.py[:ARG] --workdir=DIR``.

Any config field can be overridden (``--config.model.num_layers=6``); the
config is locked, so a mistyped field is an error.  Re-running the same command
with the same ``--workdir`` resumes from the latest checkpoint.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from gpt2_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Run config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete a different run found in --workdir instead of refusing.")
_ACCEPT_DATA_CHANGE = flags.DEFINE_bool(
    "accept_data_change", False, "Resume although the run's data changed (its tokenizer must not have)."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Our progress at INFO; the libraries' (Orbax logs every file it writes) at WARNING.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("gpt2_jax").setLevel(logging.INFO)
    from gpt2_jax import experiment, train  # deferred so that --help stays fast

    try:
        config = _CONFIG.value
        config.model  # noqa: B018 - a config file that failed to load raises on first access
    except OSError as e:  # ml_collections could not load the config file
        reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
        print(f"error: cannot load --config: {reason}", file=sys.stderr)
        sys.exit(2)
    try:
        experiment.enable_compilation_cache(config)
        results = train.train_and_evaluate(
            config, _WORKDIR.value, overwrite=_OVERWRITE.value, accept_data_change=_ACCEPT_DATA_CHANGE.value
        )
    except (UserError, train.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if results.get("preempted"):
        print(f"stopped after step {results['step']}; re-run the same command to continue")
        return
    print(
        f"final eval loss {results['final_eval_loss']:.4f} (best {results['best_eval_loss']:.4f}), "
        f"{results['train_tokens_per_s']:.0f} tokens/s, {results['wall_time_s']:.1f} s"
    )


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with one-line errors for unknown or malformed config overrides."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        # ml_collections reports an unknown field as a quoted, nested KeyError text.
        text = str(e.args[0] if e.args else e).replace("\\n", "\n").replace("\\'", "'").strip("'\" ")
        name, *hint = text.split("\n")
        overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
        print(f"error: the config has no field {name.strip(chr(39))} ({overrides}). {' '.join(hint)}", file=sys.stderr)
    except SyntaxError as e:  # a config file that is not Python
        print(f"error: cannot load --config: {e.filename} line {e.lineno}: SyntaxError: {e.msg}", file=sys.stderr)
    except (flags.Error, ValueError) as e:  # a malformed value, or a config's get_config() refusing its argument
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # A config file that raised carries its traceback: keep the first and last lines.
        print(f"error: {lines[0]} {lines[-1] if len(lines) > 1 else ''}".rstrip(), file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
