"""Synthetic sequence transduction: copy, reverse, sort, ... with the operation token first or last.

``configs/synthetic.py`` trains a small encoder-decoder on the copy task;
``configs/synthetic.py:reverse`` (or ``sort``, ``shift``, ``dedup``, or a mixture
such as ``copy,reverse,sort``) picks the task.  Change the architecture with
``--config.model.arch`` and the operation's place with
``--config.data.synthetic.op_position=last``.  Validation reports exact match
(a whole output right), equal to greedy decoding's; ``test_ood`` holds strings
longer than any seen in training.
"""

from configs import default


def get_config(task: str = "copy"):
    config = default.get_config()
    config.data.dataset = "synthetic"
    config.data.tokenizer = "char"
    config.data.synthetic.task = task
    config.data.synthetic.op_position = "first"
    config.data.synthetic.alphabet_size = 16
    config.data.synthetic.min_len, config.data.synthetic.max_len = 4, 12
    config.data.synthetic.ood_min_len, config.data.synthetic.ood_max_len = 13, 16
    config.data.synthetic.num_train, config.data.synthetic.num_eval = 20000, 1000
    config.data.seq_len = 40  # a whole example (source, separator, target, eos) fits every architecture
    config.model.arch = "encoder_decoder"
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.emb_dim = 128
    config.batch_size = 32
    config.num_train_steps = 600
    config.eval_every_steps = 200
    config.checkpoint_every_steps = 200
    config.optimizer.learning_rate = 1e-3
    config.optimizer.min_learning_rate = 1e-4
    config.optimizer.warmup_steps = 100
    config.optimizer.b2 = 0.98
    return config
