#!/usr/bin/env bash
# kb serve on the GPU with the DeepSeek generator (random Lite-shaped weights) and, by default,
# all-MiniLM-L6-v2 on the GPU as the embedder (EMBEDDER=deepseek: DeepSeek's embedding head).
# On the GPU machine, from the repo root, with .gpu/ carried: kb.xz or kb.gz (scripts/build-cuda.sh,
# stripped and compressed to fit the transfer), lite/ (scripts/gpu/lite_model_dir.py), minilm/ or
# minilm.tgz (all-MiniLM-L6-v2; its weights may be stored in f16 to fit the transfer: the GPU runs
# it in bf16 anyway) and scifact/ (BEIR SciFact: corpus.jsonl.gz, queries.jsonl, qrels/).
#   scripts/gpu/run-serve-bench.sh ingest   SciFact (kb eval beir: hybrid with MiniLM, vector with the head)
#   scripts/gpu/run-serve-bench.sh ask      kb serve; streamed /ask at 1 and 16 concurrent clients
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
W=${WORK:-/tmp/kb-gpu}
mkdir -p "$W"
cat > "$W/kb.toml" <<TOML
generator = "deepseek"
embedder = "${EMBEDDER:-encoder}"
models_dir = "$PWD/.gpu"
encoder = "minilm"
embedder_device = "cuda"
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
# kb.xz (smaller, to leave room for MiniLM in one transfer) or kb.gz.
if [ ! -x "$W/kb" ]; then
  if [ -f .gpu/kb.xz ]; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' .gpu/kb.xz "$W/kb"
  else
    gunzip -c .gpu/kb.gz > "$W/kb"
  fi
  chmod +x "$W/kb"
fi
[ -d .gpu/minilm ] || [ ! -f .gpu/minilm.tgz ] || tar xzf .gpu/minilm.tgz -C .gpu
[ -f .gpu/scifact/corpus.jsonl ] || gunzip -k .gpu/scifact/corpus.jsonl.gz 2>/dev/null || gunzip -c .gpu/scifact/corpus.jsonl.gz > "$W/corpus.jsonl"
KB="$W/kb"
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
    ingest)
      "$KB" --config "$W/kb.toml" --data-dir "$W/data" eval beir .gpu/scifact --collection scifact \
        --mode "$([ "${EMBEDDER:-encoder}" = deepseek ] && echo vector || echo hybrid)" ;;
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
