#!/usr/bin/env bash
# The checks that need a GPU, in one run: the cuDNN-vs-XLA attention test, where the
# GPT-2 124M bfloat16 train step spends its time (experiments.profile_step), and its
# training benchmark (ours with cuDNN and XLA attention, and transformers' GPT-2 eager
# and under torch.compile on the same GPU).  PROFILE_ONLY=1 skips the peers.
#
# Usage (from the repository root, on a machine with one GPU and the package's
# dependencies installed): experiments/gpu_check.sh [OUTDIR]   (default results/gpu_check)
set -uo pipefail
OUT_DIR=${1:-results/gpu_check}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda
# JAX and PyTorch share the GPU in the benchmark: JAX takes 45% of its memory up front.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
python3 -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())" \
  | tee -a "$OUT_DIR/gpu.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_model.py -k cudnn 2>&1 | tee "$OUT_DIR/test_gpu.log"
timeout 150 python3 -m experiments.profile_step --shape=gpt2_124m --dtype=bfloat16 --batch=32 \
  --arch=decoder_only:cudnn --top=40 2>&1 | tee "$OUT_DIR/profile_124m_b32.log"
BENCH=(python3 -m experiments.bench --shape=gpt2_124m --dtype=bfloat16 --contexts= --rounds=5 --steps=3)
if [[ -n "${PROFILE_ONLY:-}" ]]; then
  timeout 120 "${BENCH[@]}" --batch=32 --attention_impl=cudnn --archs=decoder_only --peer=false 2>&1 \
    | tee "$OUT_DIR/bench_124m_b32_ours.log"
  exit 0
fi
timeout 240 "${BENCH[@]}" --batch=16 --attention_impl=cudnn --compile_peer=false \
  --archs=decoder_only,prefix_lm,encoder_decoder,decoder_only:xla 2>&1 | tee "$OUT_DIR/bench_124m_b16.log"
timeout 150 "${BENCH[@]}" --batch=32 --attention_impl=cudnn --archs=decoder_only 2>&1 | tee "$OUT_DIR/bench_124m_b32.log"
# The fused output layer + loss over all 1024 positions at once instead of the default chunks.
timeout 120 "${BENCH[@]}" --batch=32 --attention_impl=cudnn --archs=decoder_only --peer=false --loss_chunk_len=0 \
  2>&1 | tee "$OUT_DIR/bench_124m_b32_chunk0.log"
