#!/usr/bin/env bash
# Session 5, second call: do epilogues appear once Triton GEMM fusion is off? GPU test failures in detail; the A/B.
set -uo pipefail
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
cp .base/probe_mlp.py /tmp/probe_mlp.py
timeout 60 python3 /tmp/probe_mlp.py 2>&1 | grep -vE "^[IWE][0-9]{4}" | tee $OUT/probe_mlp_no_triton.log
B=(python3 -m experiments.bench --shape=gpt2_124m --dtype=bfloat16 --contexts= --rounds=5 --steps=4 --peer=false
   --batch=64 --archs=decoder_only:cudnn@logits_dtype=bfloat16)
base() { (cd .base && PYTHONPATH=/tmp/site:$PWD timeout 70 "${B[@]}" 2>&1); }
new() { timeout 70 "${B[@]}" 2>&1; }
F="--xla_gpu_enable_cublaslt=true --xla_gpu_enable_triton_gemm=false"
show() { echo "== $1 $(grep -E '^ours|rror' $OUT/$1.log | head -2)"; }
XLA_FLAGS=$F base > $OUT/base_lt_nt.log; show base_lt_nt
XLA_FLAGS=$F new > $OUT/new_lt_nt.log; show new_lt_nt
timeout 75 python3 -m pytest -q -rf --tb=line tests/test_model.py tests/test_losses.py \
  -k "training_loss or padded_vocab or gelu or mlp or cudnn or input_bias or key_bias or tied or embedding" 2>&1 \
  | grep -E "^FAILED|passed|failed|^/|Mismatch|Max abs" | head -30 | tee $OUT/test_gpu_default.log
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 60 python3 -m pytest -q -rf --tb=line tests/test_model.py \
  -k "training_loss or padded_vocab" 2>&1 | grep -E "^FAILED|passed|failed" | tee $OUT/test_gpu_highest.log
XLA_FLAGS=--xla_gpu_enable_triton_gemm=false new > $OUT/new_nt.log; show new_nt
