#!/usr/bin/env bash
# Brings kb up on a fresh machine with the embedded defaults (SQLite, local indexes, CPU
# models) and a small demo corpus from fixtures/, then serves it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/fetch-models.sh
cargo build --release --locked --bin kb
kb="${CARGO_TARGET_DIR:-target}/release/kb"
"$kb" ingest --collection demo fixtures/handbook.pdf fixtures/guide.md fixtures/page.html fixtures/notes.txt
echo "demo corpus ingested into collection 'demo'; starting kb serve (Ctrl-C stops it)"
exec "$kb" serve "$@"
