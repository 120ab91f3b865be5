"""gpt2_jax: decoder-only vs encoder-decoder Transformers, compared by experiment, in JAX/Flax."""

__version__ = "0.1.0"
