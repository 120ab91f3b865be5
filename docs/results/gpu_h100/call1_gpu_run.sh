#!/usr/bin/env bash
# Session 5 (first H100 lease): GELU as the cuBLASLt epilogue of c_fc. HEAD (.base) against the working tree
# (gelu with a custom VJP, MLP on one token axis), with and without xla_gpu_enable_cublaslt; an MLP probe; GPU tests;
# a profile.
set -uo pipefail
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
python3 -c "import sys, jax, flax; print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 | tail -1 | tee -a $OUT/gpu.txt
cp .base/probe_mlp.py /tmp/probe_mlp.py
timeout 100 python3 /tmp/probe_mlp.py 2>&1 | grep -vE "^[IWE][0-9]{4}" | tee $OUT/probe_mlp.log
B=(python3 -m experiments.bench --shape=gpt2_124m --dtype=bfloat16 --contexts= --rounds=5 --steps=4 --peer=false
   --batch=64 --archs=decoder_only:cudnn@logits_dtype=bfloat16)
base() { (cd .base && PYTHONPATH=/tmp/site:$PWD timeout 75 "${B[@]}" 2>&1); }
new() { timeout 75 "${B[@]}" 2>&1; }
LT=--xla_gpu_enable_cublaslt=true
show() { echo "== $1 $(grep -E '^ours|rror' $OUT/$1.log | head -2)"; }
base > $OUT/base.log; show base
XLA_FLAGS=$LT new > $OUT/new_lt.log; show new_lt
new > $OUT/new.log; show new
XLA_FLAGS=$LT base > $OUT/base_lt.log; show base_lt
XLA_FLAGS=$LT new > $OUT/new_lt_2.log; show new_lt_2
timeout 130 python3 -m pytest -q -p no:cacheprovider tests/test_model.py tests/test_losses.py 2>&1 | tail -12 > $OUT/test_gpu.log
tail -3 $OUT/test_gpu.log
XLA_FLAGS="$LT --xla_gpu_enable_triton_gemm=false" new > $OUT/new_lt_no_triton_gemm.log; show new_lt_no_triton_gemm
XLA_FLAGS="$LT --xla_gpu_enable_command_buffer=" timeout 80 python3 -m experiments.profile_step --shape=gpt2_124m \
  --dtype=bfloat16 --batch=64 --arch=decoder_only:cudnn@logits_dtype=bfloat16 --top=120 --trace_dir=/tmp/trace 2>&1 \
  | grep -vE "^[IWE][0-9]{4}" > $OUT/profile_new_lt_b64.log
grep -A16 "^category" $OUT/profile_new_lt_b64.log
