#!/usr/bin/env bash
# Runs kb's whole test suite on a fresh machine: fetches the models, makes sure a PostgreSQL
# server is reachable (installing and starting one if needed), then runs every test.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

bash scripts/fetch-models.sh
source scripts/ensure-postgres.sh

log="$(mktemp)"
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# cargo's last line is the doc-test run's (often "0 passed"): close with the whole count.
awk '/^test result:/ {p += $4; f += $6; s += $8} END {printf "summary: %d passed, %d failed, %d skipped\n", p, f, s}' "$log"
rm -f "$log"
exit "$status"
