#!/usr/bin/env bash
# Session 7, call 2: GPU tests of the LayerNorm folding; cuBLASLt epilogues with it (b64, b128); profile.
set -uo pipefail
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
timeout 120 python3 -m pytest -q -p no:cacheprovider -rf --tb=short -x tests/test_model.py \
  -k "epilogue or input_scale or layer_norm or training_loss or padded_vocab or cudnn" > $OUT/test_gpu.txt 2>&1
grep -E "passed|failed|^FAILED|Error|assert" $OUT/test_gpu.txt | head -12
D=decoder_only:cudnn@logits_dtype=bfloat16
B=(python3 -m experiments.bench --shape=gpt2_124m --dtype=bfloat16 --contexts= --rounds=5 --steps=4 --peer=false)
NT=xla_gpu_enable_triton_gemm=false
LT=$NT,xla_gpu_enable_cublaslt=true
run() { local name=$1; shift; timeout 80 "${B[@]}" "$@" > $OUT/$name.txt 2>&1; echo "== $name $(grep -E '^ours|rror' $OUT/$name.txt | head -2)"; }
run new_b64_nt_3 --batch=64 --archs=$D --xla_options=$NT
run new_b64_lt_2 --batch=64 --archs=$D --xla_options=$LT
run new_b128_lt --batch=128 --archs=$D --xla_options=$LT
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 100 python3 -m experiments.profile_step --shape=gpt2_124m \
  --dtype=bfloat16 --batch=64 --xla_options=$NT --arch=$D --top=60 > $OUT/profile_new_b64_nt.txt 2>&1
grep -vE "^[IWE][0-9]{4}" $OUT/profile_new_b64_nt.txt | head -18
