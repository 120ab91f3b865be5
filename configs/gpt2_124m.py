"""GPT-2 small (124M): 12 layers, 12 heads, width 768, context 1024, GPT-2's BPE vocabulary (50257).

``configs/gpt2_124m.py`` trains it from scratch on tiny Shakespeare (a GPU
job: bfloat16 compute, batch 8 x 1024 tokens, cuDNN attention);
``configs/gpt2_124m.py:finetune`` starts from OpenAI's weights imported from a
Hugging Face checkpoint (``--config.model.init_from=/path/to/gpt2`` for a local
folder with config.json and model.safetensors; the hub name ``gpt2`` when
online) and fine-tunes with a small learning rate.
"""

from configs import default


def get_config(mode: str = "scratch"):
    config = default.get_config()
    config.data.corpus = "tinyshakespeare/input.txt"
    config.data.tokenizer = "gpt2"
    config.data.seq_len = 1024
    config.model.num_layers = 12
    config.model.num_heads = 12
    config.model.emb_dim = 768
    config.model.dtype = "bfloat16"
    config.model.pad_vocab_to = 64  # 50257 -> 50304 token-table rows, as nanoGPT
    # The speed paths a GPU step needs (docs/performance.md): cuDNN flash attention, the output layer fused with
    # its loss, and a GELU whose backward pass keeps only its input.
    config.model.attention_impl = "cudnn"
    config.model.loss_impl = "fused"
    config.model.gelu_impl = "recompute"
    config.model.dropout_rate = 0.0
    # GPUs: cuBLAS for every matmul instead of XLA's Triton GEMM fusions (docs/performance.md); ignored elsewhere.
    config.xla_options = "xla_gpu_enable_triton_gemm=false"
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 5000
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.optimizer.learning_rate = 6e-4
    config.optimizer.min_learning_rate = 6e-5
    config.optimizer.warmup_steps = 200
    config.optimizer.b2 = 0.95
    config.optimizer.weight_decay = 0.1
    if mode == "finetune":
        config.model.init_from = "gpt2"
        config.num_train_steps = 500
        config.eval_every_steps = 100
        config.checkpoint_every_steps = 100
        config.optimizer.learning_rate = 3e-5
        config.optimizer.min_learning_rate = 3e-5
        config.optimizer.warmup_steps = 0
    elif mode != "scratch":
        raise ValueError(f"unknown mode {mode!r} of gpt2_124m; use 'scratch' (default) or 'finetune'")
    return config
