#!/usr/bin/env bash
# Session 7, call 1: LayerNorm folding (new) against HEAD 7f852ec (base), batch 64 and 128; GPU tests; profile.
set -uo pipefail
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
D=decoder_only:cudnn@logits_dtype=bfloat16
B=(python3 -m experiments.bench --shape=gpt2_124m --dtype=bfloat16 --contexts= --rounds=5 --steps=4 --peer=false
   --xla_options=xla_gpu_enable_triton_gemm=false)
base() { (cd .base && PYTHONPATH=/tmp/site:$PWD timeout 80 "${B[@]}" "$@" 2>&1); }
new() { timeout 80 "${B[@]}" "$@" 2>&1; }
show() { echo "== $1 $(grep -E '^ours|rror' $OUT/$1.log | head -3)"; }
base --batch=64 --archs=$D > $OUT/base_b64_1.log; show base_b64_1
new --batch=64 --archs=$D > $OUT/new_b64_1.log; show new_b64_1
base --batch=64 --archs=$D > $OUT/base_b64_2.log; show base_b64_2
new --batch=64 --archs=$D > $OUT/new_b64_2.log; show new_b64_2
timeout 90 python3 -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_model.py \
  -k "cudnn or gelu or mlp or key_bias or input_scale or layer_norm or training_loss or padded_vocab" 2>&1 \
  | grep -vE "^[IWE][0-9]{4}" | tail -40 > $OUT/test_gpu.log; tail -3 $OUT/test_gpu.log
new --batch=128 --archs=$D > $OUT/new_b128.log; show new_b128
new --batch=64 --archs=$D --xla_options=xla_gpu_enable_triton_gemm=false,xla_gpu_enable_cublaslt=true > $OUT/new_b64_lt.log; show new_b64_lt
base --batch=128 --archs=$D > $OUT/base_b128.log; show base_b128
timeout 100 python3 -m experiments.profile_step --shape=gpt2_124m --dtype=bfloat16 --batch=64 \
  --xla_options=xla_gpu_enable_triton_gemm=false --arch=$D --top=60 2>&1 | grep -vE "^[IWE][0-9]{4}" > $OUT/profile_new_b64.log
head -20 $OUT/profile_new_b64.log
