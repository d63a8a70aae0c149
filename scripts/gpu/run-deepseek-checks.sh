#!/usr/bin/env bash
# On the GPU machine, from the repo root, with the CUDA build carried in .gpu/ (scripts/build-cuda.sh):
#   scripts/gpu/run-deepseek-checks.sh [tiny] [lite] [bench] [ref-bench]
# tiny:      transformers writes a tiny random checkpoint + logits; kb compares (TINY_SEQ tokens, 48;
#            over 64 the bf16 prefill takes the prefill kernels).
# lite:      the same at the DeepSeek-V2-Lite shape (27 layers; LITE_LAYERS overrides), ~31 GB on disk.
# bench:     kb's prefill / decode throughput on random Lite-shaped bf16 weights made on the GPU.
# ref-bench: transformers' throughput on the same shape, and the copy bandwidth.
# gen-bench: kb's continuous-batching scheduler, BATCHES concurrent requests (PROMPT tokens in, NEW out).
# ref-gen-bench: transformers' generate at the same batch sizes.
# int4:      int4 (W4A16) against bf16 on the same random Lite-shaped weights, one process: the
#            W4A16 kernels against dequantised products, loaded memory, logits, prefill, decode
#            (INT4_BATCHES: the decode batch sizes, 8,16,32 by default).
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
KB_DEVICE_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
export KB_DEVICE_NAME
W=${WORK:-/tmp/deepseek-checks}
BIN=${BIN:-.gpu/deepseek-bench}
mkdir -p "$W"
echo "device: $KB_DEVICE_NAME"
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
    tiny)
      python3 scripts/gpu/deepseek_ref.py --shape tiny --out "$W/tiny" --seq ${TINY_SEQ:-48} && "$BIN" compare "$W/tiny" ;;
    lite)
      python3 scripts/gpu/deepseek_ref.py --shape lite ${LITE_LAYERS:+--layers $LITE_LAYERS} --out "$W/lite" --seq 32 \
        && "$BIN" compare "$W/lite"; rm -rf "$W/lite" ;;
    bench)
      "$BIN" bench --steps ${STEPS:-64} ;;
    int4)
      "$BIN" int4 --steps ${STEPS:-64} ${INT4_BATCHES:+--batches $INT4_BATCHES} ;;
    ref-bench)
      python3 scripts/gpu/deepseek_ref.py --shape lite --out "$W/lite-bench" --no-save --bench --decode-steps ${REF_STEPS:-24} ;;
    gen-bench)
      "$BIN" serve-bench --batches ${BATCHES:-1,8,32,64} --prompt ${PROMPT:-1024} --new ${NEW:-128} ;;
    ref-gen-bench)
      python3 scripts/gpu/deepseek_ref.py --shape lite --out "$W/lite-gen" --no-save \
        --gen-batches ${BATCHES:-1,8,32,64} --gen-prompt ${PROMPT:-1024} --gen-new ${NEW:-128} ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "=== $step done rc=$? $(date +%T)"
done
