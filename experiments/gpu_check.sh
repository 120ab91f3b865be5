#!/usr/bin/env bash
# The checks that need a GPU, in one run: the model tests that behave differently there
# (cuDNN against XLA attention, the GELU's cuBLASLt epilogue, float32 tests under TF32),
# where the GPT-2 124M bfloat16 train step spends its time (experiments.profile_step), and its
# training benchmark (ours with cuDNN and XLA attention, float32 and bfloat16 logits, the
# loss in one chunk, and transformers' GPT-2 eager and under torch.compile on the same
# GPU), at batch 32, 64 and 128.  Ours compiles with configs/gpt2_124m.py's XLA options
# (XO below); one batch-64 run without them compares.  PROFILE_ONLY=1 skips the peers.
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
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_model.py \
  -k "cudnn or gelu or mlp or key_bias or input_bias or training_loss or padded_vocab" 2>&1 | tee "$OUT_DIR/test_gpu.log"
XO=--xla_options=xla_gpu_enable_triton_gemm=false
timeout 150 python3 -m experiments.profile_step --shape=gpt2_124m --dtype=bfloat16 --batch=32 "$XO" \
  --arch=decoder_only:cudnn --top=40 2>&1 | tee "$OUT_DIR/profile_124m_b32.log"
BENCH=(python3 -m experiments.bench --shape=gpt2_124m --dtype=bfloat16 --contexts= --rounds=6 --steps=4 "$XO")
D=decoder_only:cudnn
if [[ -n "${PROFILE_ONLY:-}" ]]; then
  timeout 120 "${BENCH[@]}" --batch=32 --archs=$D,$D@logits_dtype=bfloat16 --peer=false 2>&1 \
    | tee "$OUT_DIR/bench_124m_b32_ours.log"
  exit 0
fi
# torch.compile of the peer alone takes minutes: this run needs its long timeout.
timeout 420 "${BENCH[@]}" --batch=32 \
  --archs=$D,$D@logits_dtype=bfloat16,$D@loss_chunk_len=0,prefix_lm:cudnn,encoder_decoder:cudnn,decoder_only:xla \
  2>&1 | tee "$OUT_DIR/bench_124m_b32.log"
timeout 150 "${BENCH[@]}" --batch=64 --archs=$D,$D@logits_dtype=bfloat16 --peer=false 2>&1 \
  | tee "$OUT_DIR/bench_124m_b64.log"
timeout 150 "${BENCH[@]}" --xla_options= --batch=64 --archs=$D@logits_dtype=bfloat16 --peer=false 2>&1 \
  | tee "$OUT_DIR/bench_124m_b64_without_xla_options.log"
timeout 150 "${BENCH[@]}" --batch=128 --archs=$D@logits_dtype=bfloat16 --peer=false 2>&1 \
  | tee "$OUT_DIR/bench_124m_b128.log"
