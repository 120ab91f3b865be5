"""GPT-2 weights in and out: Hugging Face checkpoints (``config.json`` + ``model.safetensors``) <-> our params.

Read and written with ``safetensors``' numpy API (no PyTorch).  GPT-2's
``Conv1D`` weights are stored ``[in, out]``, the same layout as a Flax
``Dense`` kernel, so the mapping is a renaming: ``transformer.h.{i}.attn.c_attn.weight``
-> ``h_{i}/attn/c_attn/kernel``, LayerNorm ``weight`` -> ``scale``.  The one
reshape: ``c_attn``'s ``[D, 3D]`` weight and ``[3D]`` bias hold the queries',
keys' and values' columns one after another; ours keep them on an axis of their
own (``[D, 3, D]``, ``[3, D]``; see ``model.FusedQKV``).  The LM head is tied to
``wte`` in both.

The four published sizes are :data:`SIZES` (124M, 355M, 774M, 1.5B).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from gpt2_jax.errors import CheckpointError
from gpt2_jax.model import TransformerConfig

# name: (layers, width, heads); all use context 1024 and vocabulary 50257.
SIZES = {
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
}
HUB_NAMES = {"124m": "gpt2", "355m": "gpt2-medium", "774m": "gpt2-large", "1.5b": "gpt2-xl"}


def config_from_hf(hf: dict[str, Any], pad_vocab_to: int = 1) -> TransformerConfig:
    """Our decoder-only config for a Hugging Face GPT-2 ``config.json`` (token table padded to ``pad_vocab_to``)."""
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"GPT-2 checkpoint uses activation {activation!r}; only GPT-2's tanh GELU is supported")
    width = hf["n_embd"]
    return TransformerConfig(
        arch="decoder_only",
        vocab_size=hf["vocab_size"],
        num_layers=hf["n_layer"],
        num_encoder_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        emb_dim=width,
        mlp_dim=hf.get("n_inner") or 4 * width,
        max_len=hf["n_positions"],
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        pad_vocab_to=pad_vocab_to,
    )


def config_to_hf(cfg: TransformerConfig) -> dict[str, Any]:
    """A Hugging Face ``GPT2Config`` dictionary for a decoder-only config."""
    if cfg.arch != "decoder_only" or cfg.positional != "learned" or not cfg.use_bias:
        raise CheckpointError(
            f"only decoder-only models with learned positions and biases map to GPT-2, not arch={cfg.arch!r}"
        )
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_len,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.mlp_dim,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "resid_pdrop": cfg.dropout_rate,
        "embd_pdrop": cfg.dropout_rate,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": True,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    }


def _our_path(hf_name: str) -> tuple[str, ...] | None:
    """Our parameter path for a Hugging Face tensor name (None for buffers we do not keep)."""
    name = hf_name.removeprefix("transformer.")
    if name in ("lm_head.weight",) or name.endswith((".attn.bias", ".attn.masked_bias")):
        return None  # tied head; causal-mask buffers of old checkpoints
    if name in ("wte.weight", "wpe.weight"):
        return (name.split(".")[0], "embedding")
    parts = name.split(".")
    leaf = {"weight": "kernel", "bias": "bias"}[parts[-1]]
    if parts[0] == "h":
        path = (f"h_{parts[1]}", *parts[2:-1])
    else:
        path = tuple(parts[:-1])
    if path[-1].startswith("ln_"):
        leaf = "scale" if parts[-1] == "weight" else "bias"
    return (*path, leaf)


def _hf_name(path: tuple[str, ...]) -> str:
    *module, leaf = path
    if leaf == "embedding":
        return f"transformer.{module[0]}.weight"
    module = [f"h.{m[2:]}" if re.fullmatch(r"h_\d+", m) else m for m in module]
    suffix = "weight" if leaf in ("kernel", "scale") else "bias"
    return "transformer." + ".".join([*module, suffix])


def _is_fused_qkv(path: tuple[str, ...]) -> bool:
    return len(path) >= 2 and path[-2] == "c_attn"


def _to_ours(path: tuple[str, ...], tensor: np.ndarray, width: int) -> np.ndarray:
    """GPT-2's ``c_attn`` ``[D, 3D]`` / ``[3D]`` as our ``[D, 3, D]`` / ``[3, D]``; other tensors unchanged."""
    return tensor.reshape(*tensor.shape[:-1], -1, width) if _is_fused_qkv(path) else tensor


def _to_hf(path: tuple[str, ...], tensor: np.ndarray) -> np.ndarray:
    return tensor.reshape(*tensor.shape[:-2], -1) if _is_fused_qkv(path) else tensor


def _resolve(path_or_name: str) -> Path:
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return path
    name = HUB_NAMES.get(path_or_name.lower(), path_or_name)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["config.json", "model.safetensors"]))
    except Exception as e:
        raise CheckpointError(
            f"{path_or_name!r} is not a folder with config.json and model.safetensors, and downloading it from the "
            f"Hugging Face hub failed ({type(e).__name__}); pass a local folder"
        ) from None


def load(path_or_name: str, pad_vocab_to: int = 1) -> tuple[TransformerConfig, dict[str, Any]]:
    """Import a Hugging Face GPT-2 checkpoint: ``(config, params)`` for our decoder-only model.

    With ``pad_vocab_to`` the token table gets zero rows up to the next
    multiple (the model masks them out of its predictions).
    """
    from safetensors.numpy import load_file

    folder = _resolve(path_or_name)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).exists():
            raise CheckpointError(
                f"{folder} has no {name}; a GPT-2 checkpoint folder needs config.json and model.safetensors"
            )
    try:
        cfg = config_from_hf(json.loads((folder / "config.json").read_text()), pad_vocab_to)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / 'config.json'} is not a GPT-2 config ({type(e).__name__}: {e})") from None
    try:
        tensors = load_file(str(folder / "model.safetensors"))
    except Exception as e:  # safetensors reports a malformed file with its own error types
        raise CheckpointError(
            f"{folder / 'model.safetensors'} is not a safetensors file ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    flat = {}
    for name, tensor in tensors.items():
        path = _our_path(name)
        if path is not None:
            flat[path] = _to_ours(path, np.asarray(tensor, np.float32), cfg.emb_dim)
    wte = flat[("wte", "embedding")]
    flat[("wte", "embedding")] = np.pad(wte, [(0, cfg.table_rows - len(wte)), (0, 0)])
    return cfg, traverse_util.unflatten_dict(flat)


def save(params: dict[str, Any], cfg: TransformerConfig, folder: str | Path) -> Path:
    """Export our decoder-only params as a Hugging Face GPT-2 checkpoint folder."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_config = config_to_hf(cfg)
    flat = traverse_util.flatten_dict(params)
    flat[("wte", "embedding")] = np.asarray(flat[("wte", "embedding")])[: cfg.vocab_size]  # without padded rows
    tensors = {_hf_name(p): np.ascontiguousarray(_to_hf(p, np.asarray(v, np.float32))) for p, v in flat.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2))
    return folder
