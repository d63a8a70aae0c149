#!/usr/bin/env bash
# Batched decode on the GPU machine: ms/step at batch 32 and 64 (27 layers, 1,024-token contexts),
# then Nsight Compute times of kb's decode kernels on a 4-layer model.
#   scripts/gpu/prof-decode-batch.sh [KB_DEEPSEEK_NVRTC_OPTIONS variants...]
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
B=${BIN:-.gpu/deepseek-bench}
for opt in "" "$@"; do
  echo "options: ${opt:-default}"
  for b in ${BATCHES:-32 64}; do KB_DEEPSEEK_NVRTC_OPTIONS="$opt" $B decode-batch --batch $b --steps 16 | grep RESULT; done
done
ncu --cache-control none --clock-control none -k regex:"mla_|moe_" --metrics gpu__time_duration.sum --csv --page raw \
  $B decode-batch --layers 4 --batch 32 --prompt 1024 --steps 2 > /tmp/ncu.csv 2>/tmp/ncu.err || tail -3 /tmp/ncu.err
python3 scripts/gpu/ncu_agg.py /tmp/ncu.csv
