"""Opt-in speed paths, each chosen by an explicit ``config.model`` field and tested equal to its plain form.

* :mod:`.cross_entropy` (``loss_impl="fused"``): the output layer and its
  cross-entropy with the gradients formed in the forward pass.
* :mod:`.attention` (``attention_impl="block_causal"``): causal self-attention
  one block of queries at a time, skipping the keys after each block.
* :mod:`.gelu` (``gelu_impl="recompute"``): a GELU whose backward pass keeps only its input.

What each one buys, and on which device, is in ``docs/performance.md``.
"""
