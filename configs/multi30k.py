"""Multi30k German-to-English translation (task 1, 29,000 training pairs).

The default trains a small encoder-decoder translator (2+2 layers, width 128;
about 20 minutes on 2 CPU cores) on a joint SentencePiece vocabulary learned
from the training split; ``configs/multi30k.py:full`` is a 3+3-layer, 256-wide
model for an accelerator.
``--config.model.arch=decoder_only`` or ``prefix_lm`` trains the concatenated
variants (``source <sep> target``) on exactly the same target tokens;
``--config.data.decoder_only_loss=all`` also puts loss on the source, as Liu et
al. 2018 did.  ``--config.data.direction=en-de`` reverses the direction.
Validation and test (2016 Flickr) report loss, token accuracy and exact match.
"""

from configs import default


def get_config(size: str = "cpu"):
    config = default.get_config()
    config.data.dataset = "multi30k"
    config.data.direction = "de-en"
    config.data.tokenizer = "sentencepiece"
    config.data.vocab_size = 2000
    config.data.seq_len = 96  # source + target of nearly every pair fits every architecture
    config.data.pack = True
    config.model.arch = "encoder_decoder"
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.emb_dim = 128
    config.model.dropout_rate = 0.1
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_train_steps = 1500
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.optimizer.learning_rate = 1e-3
    config.optimizer.min_learning_rate = 1e-4
    config.optimizer.warmup_steps = 200
    config.optimizer.b2 = 0.98
    if size == "full":
        config.data.vocab_size = 8000
        config.data.seq_len = 128
        config.model.num_layers = 3
        config.model.emb_dim = 256
        config.batch_size = 64
        config.num_train_steps = 10000
    elif size != "cpu":
        raise ValueError(f"unknown size {size!r} of multi30k; use 'cpu' (default) or 'full'")
    return config
