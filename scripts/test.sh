#!/usr/bin/env bash
# Runs kb's whole test suite on a fresh machine: the house rules first (scripts/lint.sh:
# cargo fmt --check, clippy and rustdoc with warnings as errors, the links of the maps), then
# fetches the models, installs Tesseract and poppler when missing, makes sure a PostgreSQL
# server is reachable (installing and starting one if needed), runs every Rust test, then the
# web UI's browser tests (installing Chromium and playwright-core if needed) against the kb
# binary the Rust tests built.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

bash scripts/lint.sh
bash scripts/fetch-models.sh
bash scripts/ensure-tools.sh
source scripts/ensure-postgres.sh

log="$(mktemp)"
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
web_status=0
if [ "$status" -eq 0 ]; then
  KB_BIN="${CARGO_TARGET_DIR:-target}/debug/kb" KB_E2E_EMBEDDED=1 bash scripts/test-web.sh 2>&1 | tee -a "$log"
  web_status=${PIPESTATUS[0]}
fi
set -e
# cargo's last line is the doc-test run's (often "0 passed"): close with the whole count.
awk '/^test result:/ {p += $4; f += $6; s += $8}
     /^e2e: [0-9]+ passed/ {p += $2; f += $4}
     END {printf "summary: %d passed, %d failed, %d skipped\n", p, f, s}' "$log"
rm -f "$log"
[ "$status" -eq 0 ] || exit "$status"
exit "$web_status"
