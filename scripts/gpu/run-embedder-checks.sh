#!/usr/bin/env bash
# The sentence encoder (all-MiniLM-L6-v2) on the GPU: speed, then SciFact through `kb eval beir`
# (in-process ingest, then hybrid / keyword / vector nDCG@10) at each precision.
# On the GPU machine, from the repo root, with the CUDA builds and the data where these say:
#   KB=path/to/kb  BENCH=path/to/embed_bench  MODEL=models/all-MiniLM-L6-v2  SCIFACT=dir with
#   corpus.jsonl, queries.jsonl, qrels/   scripts/gpu/run-embedder-checks.sh [bench] [f32] [bf16] [cpu]
# bench: embed_bench on the GPU (f32 and bf16: one query, 16 queries, 2,048 passages).
# f32 / bf16: kb eval beir with embedder_device = "cuda" at that precision (a fresh data dir each).
# cpu: the same on the CPU, int8 (the default without a GPU), for the same-machine comparison.
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
W=${WORK:-/tmp/kb-embed}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
MODELS_DIR=$(dirname "$MODEL")
ENCODER=$(basename "$MODEL")
mkdir -p "$W"
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
    bench)
      "$BENCH" "$MODEL" all cuda ;;
    f32|bf16|cpu)
      if [ "$step" = cpu ]; then dev=cpu; prec=int8; else dev=cuda; prec=$step; fi
      rm -rf "$W/$step"
      for mode in hybrid keyword vector; do
        KB_EMBEDDER_DEVICE=$dev KB_EMBEDDER_PRECISION=$prec "$KB" --data-dir "$W/$step" --models-dir "$MODELS_DIR" \
          --encoder "$ENCODER" --generator none eval beir "$SCIFACT" --collection scifact --mode $mode --batch ${BATCH:-64}
      done ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "=== $step done rc=$? $(date +%T)"
done
