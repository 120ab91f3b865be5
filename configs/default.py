"""Default configuration: every field of the schema, with what it means.

Other configs start from this one and change a few fields, so every run has the
same schema and a mistyped override (``--config.model.num_layer=4``) is an error.
A field added to the schema must default to the behaviour from before it existed:
runs and sweeps saved without it then resume (``workdir.config_differences``).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # --- Run -----------------------------------------------------------------
    config.seed = 0  # Seeds parameter init, dropout and the data order.
    config.num_train_steps = 2000  # Optimizer steps (each one global batch).
    config.batch_size = 12  # Global batch, in sequences per optimizer step.
    config.eval_batch_size = 64  # Sequences per evaluation batch (the whole split is evaluated).
    config.eval_every_steps = 250  # Evaluate on the whole validation split every N steps (and at the end).
    config.log_every_steps = 50  # Write averaged training metrics every N steps.
    config.checkpoint_every_steps = 500  # Save a checkpoint every N steps (and at the end).
    config.max_checkpoints_to_keep = 2  # Older checkpoints are deleted.

    # --- Model (gpt2_jax.model.TransformerConfig) ------------------------------
    config.model = ml_collections.ConfigDict()
    # decoder_only | prefix_lm | encoder_decoder | encoder_only.
    config.model.arch = "decoder_only"
    config.model.vocab_size = 0  # 0 = take it from the tokenizer; otherwise must equal the tokenizer's.
    config.model.num_layers = 4  # Blocks of the (decoder) stack.
    config.model.num_encoder_layers = 0  # encoder_decoder only: encoder blocks; 0 = num_layers.
    config.model.num_heads = 4  # Attention heads; must divide emb_dim.
    config.model.emb_dim = 128  # Model width D.
    config.model.mlp_dim = 0  # MLP hidden width; 0 = 4 * emb_dim (GPT-2).
    config.model.max_len = 0  # Rows of the position table; 0 = the data's longest sequence.
    config.model.dropout_rate = 0.0  # Dropout on embeddings and residual branches.
    config.model.dtype = "float32"  # Compute dtype: float32 | bfloat16 (parameters stay float32).
    # encoder_decoder only: the encoder reuses the decoder's blocks (T5's "shared").
    config.model.share_encoder_decoder = False
    # learned (GPT-2) | none (Haviv et al. 2022) | rope (rotary, base 10,000, on self-attention's queries and keys) |
    # t5_bias (T5's 32 relative-position buckets up to distance 128, a learned bias per head shared by a stack's
    # layers; bidirectional buckets in encoders and prefix-LMs). Cross-attention has no positions.
    config.model.positional = "learned"
    config.model.remat = False  # Recompute block activations in the backward pass to save memory.
    # With remat, what each block keeps: full (only its input) | dots (also its dense layers' matmul outputs;
    # attention, LayerNorm and GELU are recomputed: less memory saved, less recomputed).
    config.model.remat_policy = "full"
    # Positions whose logits the loss forms at a time (the [B, L, V] logits are never held whole); 0 = all at once.
    config.model.loss_chunk_len = 128
    # Token-table rows rounded up to a multiple of this (nanoGPT: 50257 -> 50304 for GPT-2); the padded rows are
    # never predicted. Faster matmul shapes on accelerators, and a tensor mesh axis can split the vocabulary.
    config.model.pad_vocab_to = 1
    # Opt-in speed paths (gpt2_jax/fast/, docs/performance.md); each computes the same function as its default.
    # xla | cudnn (cuDNN flash attention, GPU only) | block_causal (XLA, causal attention per block of 128 queries).
    config.model.attention_impl = "xla"
    config.model.loss_impl = "chunked"  # chunked (optax, rematerialised per chunk) | fused (gradients in the forward).
    config.model.gelu_impl = "autodiff"  # autodiff | recompute (the backward pass keeps only the GELU's input).
    config.model.init_from = ""  # Start from GPT-2 weights: a Hugging Face checkpoint folder or hub name ("gpt2").
    config.model.vector_dim = 0  # Real-valued inputs' width; 0 = take it from the data (icl_regression sets it).

    # --- Data (gpt2_jax.data) ----------------------------------------------------
    config.data = ml_collections.ConfigDict()
    # text | multi30k | pairs | synthetic | facts | icl_regression.
    config.data.dataset = "text"
    # text: a text file or a folder of .txt files, absolute or under data_dir.
    config.data.corpus = "tinyshakespeare/input.txt"
    config.data.direction = "de-en"  # multi30k: translation direction (de-en | en-de).
    config.data.source_file = ""  # pairs: aligned source lines (training).
    config.data.target_file = ""  # pairs: aligned target lines (training).
    config.data.eval_source_file = ""  # pairs: validation source lines; "" = the last pairs of training.
    config.data.eval_target_file = ""  # pairs: validation target lines.
    config.data.data_dir = ""  # Where corpora live; "" = $GPT2_JAX_DATA_DIR, else ~/.cache/gpt2_jax/data.
    config.data.cache_dir = ""  # Writable cache for prepared data; "" = $GPT2_JAX_CACHE_DIR, else ~/.cache/gpt2_jax.
    config.data.tokenizer = "char"  # char | byte | sentencepiece | gpt2.
    config.data.vocab_size = 8192  # sentencepiece: ordinary pieces learned on the training split.
    config.data.spm_model_type = "bpe"  # sentencepiece: bpe | unigram.
    config.data.num_sentinels = 0  # Sentinel tokens for span corruption (T5 uses 100).
    config.data.seq_len = 64  # Context length: positions per row of each stack.
    config.data.train_fraction = 0.9  # text (and pairs without eval files): leading share used for training.
    # text: lm (windows cut into prefix and continuation), mlm (BERT, encoder_only),
    # span_corruption (T5), mixture (see mixture_full_lm_share); auto = mlm for encoder_only, else lm.
    # Paired data is always seq2seq.
    config.data.objective = "auto"
    config.data.cut_fraction = 0.5  # lm: prefix share of each window (eval always cuts here).
    config.data.random_cut = False  # lm: draw the cut uniformly per training window (T5's "arbitrary cut").
    # objective="mixture" (text): random cuts, and this share of training rows cut after their first token, so
    # that they carry a full-LM loss (UL2's mixture of denoisers, reduced to prefix-LM + full LM).
    config.data.mixture_full_lm_share = 0.5
    # lm: also score the continuation after cuts at these fractions of the context, e.g. (0.125, 0.25, 0.5, 0.75,
    # 0.875): eval splits continuation_cut_<prefix tokens> in results.json.
    config.data.eval_cuts = ()
    # decoder_only: where the loss goes. "all" = every token (GPT-2, nanoGPT; Liu et al. 2018 on pairs),
    # "continuation" = where prefix_lm and encoder_decoder put it; auto = all for lm, else continuation.
    config.data.decoder_only_loss = "auto"
    config.data.mask_rate = 0.15  # mlm / facts: share of positions masked (BERT: 80% mask, 10% random, 10% kept).
    config.data.noise_density = 0.15  # span_corruption: share of tokens dropped (T5).
    config.data.mean_noise_span_length = 3.0  # span_corruption: mean span length (T5).
    config.data.pack = True  # Paired data: pack several short examples per training row.
    # decoder_only / prefix_lm: continue (positions run through prefix and continuation) | restart (the position
    # that predicts continuation token j is j, as in an encoder-decoder's decoder: output j meets source j).
    config.data.target_positions = "continue"

    # Synthetic transduction tasks (dataset="synthetic").
    config.data.synthetic = ml_collections.ConfigDict()
    # Operations: copy, reverse, sort, shift, dedup; '+' composes, ',' mixes ("copy,reverse+sort").
    config.data.synthetic.task = "copy"
    config.data.synthetic.op_position = "first"  # Operation token before ("first") or after ("last") the string.
    config.data.synthetic.alphabet_size = 16  # Symbols a, b, c, ... (at most 26).
    config.data.synthetic.min_len = 4  # Shortest training/validation string.
    config.data.synthetic.max_len = 12  # Longest training/validation string.
    config.data.synthetic.ood_min_len = 13  # Shortest held-out-length test string (split test_ood).
    config.data.synthetic.ood_max_len = 16  # Longest held-out-length test string; 0 = no test_ood split.
    config.data.synthetic.num_train = 20000  # Training pairs.
    config.data.synthetic.num_eval = 1000  # Pairs in validation and in test_ood.
    config.data.synthetic.seed = 0  # Generator seed (independent of the run's seed).

    # In-context linear regression (dataset="icl_regression", Ding et al. 2023).
    config.data.icl = ml_collections.ConfigDict()
    config.data.icl.dim = 8  # Dimension d of x.
    config.data.icl.num_examples = 20  # (x, w.x) pairs in the context.
    config.data.icl.num_queries = 10  # Queries after the context of a sequence, each with loss (Ding et al.'s layout).
    config.data.icl.x_distribution = "uniform"  # x ~ U(-1, 1)^d (Ding et al.) | normal (N(0, I), Garg et al.).
    config.data.icl.noise = 0.0  # Std of Gaussian noise added to y.
    config.data.icl.num_train = 20000  # Training sequences.
    config.data.icl.num_eval = 500  # Validation sequences.
    config.data.icl.seed = 0  # Generator seed.

    # Reversal-curse facts (dataset="facts").
    config.data.facts = ml_collections.ConfigDict()
    config.data.facts.num_facts = 500  # Made-up (name, attribute) pairs, trained as "NAME is ATTR.".
    config.data.facts.seed = 0  # Generator seed.
    # forward: train on "NAME is ATTR." only | both: also on "ATTR is NAME." (the control: reverse seen in training).
    config.data.facts.directions = "forward"

    # --- Optimizer (AdamW, warmup + cosine decay or constant) ---------------------
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 1e-3  # Peak learning rate after warmup.
    config.optimizer.min_learning_rate = 1e-4  # Floor the cosine decays to.
    config.optimizer.warmup_steps = 100  # Linear warmup from 0.
    config.optimizer.decay_steps = 0  # Step at which the cosine reaches the floor; 0 = num_train_steps.
    # After warmup: cosine (decay to min_learning_rate) | constant (learning_rate throughout; curves comparable at
    # any step).
    config.optimizer.schedule = "cosine"
    config.optimizer.b1 = 0.9  # Adam beta1.
    config.optimizer.b2 = 0.99  # Adam beta2.
    config.optimizer.eps = 1e-8  # Adam epsilon.
    config.optimizer.weight_decay = 0.1  # Decoupled weight decay on matmul kernels.
    config.optimizer.decay_embeddings = False  # Also decay wte/wpe (nanoGPT decays every 2-D tensor).
    config.optimizer.grad_clip_norm = 1.0  # Global-norm clipping; 0 disables.
    config.optimizer.grad_accum_steps = 1  # Micro-batches per step; batch_size must be divisible by it.

    # --- Devices (gpt2_jax.sharding) ---------------------------------------------
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # Data-parallel axis; -1 = all devices not used by the other axes.
    config.mesh.fsdp = 1  # Fully-sharded data-parallel axis (batch and parameters split).
    config.mesh.tensor = 1  # Tensor-parallel axis (heads and MLP columns split).
    config.distributed = False  # Multi-host: call jax.distributed.initialize() before anything else.
    # distributed: process 0's "host:port"; "" = from the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU).
    config.coordinator_address = ""
    config.num_processes = 0  # distributed: processes in the job; 0 = from the cluster.
    config.process_id = -1  # distributed: this process's rank, 0 .. num_processes - 1; -1 = from the cluster.

    # XLA options for the compiled train and eval steps, "name=value,..." (XLA's debug options, which XLA_FLAGS
    # sets for a whole process). XLA:CPU ignores xla_gpu_* options (tested); other backends are untested, and
    # an option a backend rejects fails at set-up. configs/gpt2_124m.py sets one for GPUs.
    config.xla_options = ""

    # --- Failure handling ---------------------------------------------------------
    # A non-finite loss or gradient: "stop" the run naming the step (the last good
    # checkpoint stays), or "skip" the update and count it.
    config.on_nonfinite = "stop"

    return config
