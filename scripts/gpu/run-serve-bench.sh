#!/usr/bin/env bash
# kb serve on the GPU with the DeepSeek generator and embedding head, random Lite-shaped weights.
# On the GPU machine, from the repo root, with .gpu/ carried: kb.gz (scripts/build-cuda.sh, stripped,
# gzipped to fit the transfer), lite/ (scripts/gpu/lite_model_dir.py) and scifact/ (BEIR SciFact:
# corpus.jsonl.gz, queries.jsonl, qrels/).
#   scripts/gpu/run-serve-bench.sh ingest   SciFact through the embedding head (kb eval beir, vector mode)
#   scripts/gpu/run-serve-bench.sh ask      kb serve; streamed /ask at 1 and 16 concurrent clients
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
W=${WORK:-/tmp/kb-gpu}
mkdir -p "$W"
cat > "$W/kb.toml" <<TOML
generator = "deepseek"
embedder = "deepseek"
# Random weights: every passage counts as relevant, so every question reaches the generator.
answer_min_relevance = -1.0
answer_max_tokens = ${NEW:-128}
max_pending_answers = 64
[deepseek]
model_dir = "$PWD/.gpu/lite"
random_weights = true
pooling = "${POOLING:-mean}"
TOML
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
[ -x "$W/kb" ] || { gunzip -c .gpu/kb.gz > "$W/kb" && chmod +x "$W/kb"; }
[ -f .gpu/scifact/corpus.jsonl ] || gunzip -k .gpu/scifact/corpus.jsonl.gz 2>/dev/null || gunzip -c .gpu/scifact/corpus.jsonl.gz > "$W/corpus.jsonl"
KB="$W/kb"
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
    ingest)
      "$KB" --config "$W/kb.toml" --data-dir "$W/data" eval beir .gpu/scifact --collection scifact --mode vector ;;
    ask)
      "$KB" --config "$W/kb.toml" --data-dir "$W/data" serve --addr 127.0.0.1:8099 > "$W/serve.out" 2> "$W/serve.log" &
      pid=$!
      for _ in $(seq 1 240); do grep -q "kb listening" "$W/serve.out" 2>/dev/null && break; sleep 0.5; done
      grep "kb listening" "$W/serve.out" || { tail -20 "$W/serve.log"; kill $pid; exit 1; }
      python3 scripts/gpu/ask_load.py http://127.0.0.1:8099 scifact .gpu/scifact/queries.jsonl 1 ${ONE:-10}
      python3 scripts/gpu/ask_load.py http://127.0.0.1:8099 scifact .gpu/scifact/queries.jsonl 16 ${SIXTEEN:-2}
      kill $pid; wait $pid 2>/dev/null
      grep -i "error\|panic" "$W/serve.log" | tail -5 ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "=== $step done $(date +%T)"
done
