#!/usr/bin/env bash
# The checks that need a GPU, in one run: the tests that behave differently there (cuDNN
# against XLA attention, the recomputing GELU's cuBLASLt epilogue, float32 tests under TF32,
# every speed path against its plain form), where the GPT-2 124M bfloat16 train step spends
# its time (experiments.profile_step), and its training benchmark: the plain step against each
# speed path of configs/gpt2_124m.py and all of them together, and transformers' GPT-2 eager
# and under torch.compile on the same GPU, at batch 32, 64 and 128.  Ours compiles with
# configs/gpt2_124m.py's XLA options (XO below).  PROFILE_ONLY=1 skips the peers.
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
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_model.py tests/test_fast.py tests/test_attention.py \
  -k "cudnn or gelu or training_loss or padded_vocab or fast or block or fused" 2>&1 | tee "$OUT_DIR/test_gpu.log"
XO=--xla_options=xla_gpu_enable_triton_gemm=false
timeout 150 python3 -m experiments.profile_step --shape=gpt2_124m --dtype=bfloat16 --batch=32 "$XO" \
  --arch=decoder_only:cudnn@loss_impl=fused@gelu_impl=recompute --top=40 2>&1 | tee "$OUT_DIR/profile_124m_b32.log"
BENCH=(python3 -m experiments.bench --shape=gpt2_124m --dtype=bfloat16 --contexts= --rounds=6 --steps=4 "$XO")
P=decoder_only                                         # the plain step
F=decoder_only:cudnn@loss_impl=fused@gelu_impl=recompute  # configs/gpt2_124m.py's speed paths
if [[ -n "${PROFILE_ONLY:-}" ]]; then
  timeout 120 "${BENCH[@]}" --batch=32 --archs=$P,$F --peer=false 2>&1 | tee "$OUT_DIR/bench_124m_b32_ours.log"
  exit 0
fi
# torch.compile of the peer alone takes minutes: this run needs its long timeout.
timeout 420 "${BENCH[@]}" --batch=32 \
  --archs=$P,decoder_only:cudnn,$P@loss_impl=fused,$P@gelu_impl=recompute,$F,prefix_lm:cudnn,encoder_decoder:cudnn \
  2>&1 | tee "$OUT_DIR/bench_124m_b32.log"
timeout 150 "${BENCH[@]}" --batch=64 --archs=$P,$F --peer=false 2>&1 | tee "$OUT_DIR/bench_124m_b64.log"
timeout 150 "${BENCH[@]}" --batch=128 --archs=$F --peer=false 2>&1 | tee "$OUT_DIR/bench_124m_b128.log"
