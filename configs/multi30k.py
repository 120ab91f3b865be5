"""Multi30k German-to-English translation (task 1, 29,000 training pairs).

The default trains a small encoder-decoder translator (3+3 layers, width 256)
on a joint SentencePiece vocabulary learned from the training split.
``--config.model.arch=decoder_only`` or ``prefix_lm`` trains the concatenated
variants (``source <sep> target``) on exactly the same target tokens;
``--config.data.decoder_only_loss=all`` also puts loss on the source, as Liu et
al. 2018 did.  ``--config.data.direction=en-de`` reverses the direction.
Validation and test (2016 Flickr) report loss, token accuracy and exact match.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.dataset = "multi30k"
    config.data.direction = "de-en"
    config.data.tokenizer = "sentencepiece"
    config.data.vocab_size = 4000
    config.data.seq_len = 128  # source + target of nearly every pair fits every architecture
    config.data.pack = True
    config.model.arch = "encoder_decoder"
    config.model.num_layers = 3
    config.model.num_heads = 4
    config.model.emb_dim = 256
    config.model.dropout_rate = 0.1
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_train_steps = 3000
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.optimizer.learning_rate = 1e-3
    config.optimizer.min_learning_rate = 1e-4
    config.optimizer.warmup_steps = 200
    config.optimizer.b2 = 0.98
    return config
