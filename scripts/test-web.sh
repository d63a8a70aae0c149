#!/usr/bin/env bash
# Browser tests of the web UI (tests/e2e): installs Chromium and the test's npm packages when
# missing, builds kb only when no binary exists, runs `node --test`, and closes with
# "e2e: N passed, N failed". Environment: KB_BIN (kb binary, default target/release/kb, else
# target/debug/kb), KB_MODELS_DIR (default models/), KB_E2E_EMBEDDED=1 (test the UI built
# into the binary instead of web/ on disk).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x /usr/bin/chromium ]; then
  echo "e2e: installing chromium"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi

if [ ! -d tests/e2e/node_modules/playwright-core ]; then
  echo "e2e: installing npm packages"
  (cd tests/e2e && npm ci --no-audit --no-fund)
fi

if [ -z "${KB_BIN:-}" ] && [ ! -x target/release/kb ] && [ ! -x target/debug/kb ]; then
  echo "e2e: no kb binary, building one"
  cargo build -p kb --locked
fi

bash scripts/fetch-models.sh # idempotent: fetches only a missing model

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
(cd tests/e2e && node --test --test-concurrency=1 --test-reporter=spec) 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# The spec reporter closes with "ℹ pass N" and "ℹ fail N".
passed="$(awk '/^ℹ pass / {print $3}' "$log" | tail -n 1)"
failed="$(awk '/^ℹ fail / {print $3}' "$log" | tail -n 1)"
echo "e2e: ${passed:-0} passed, ${failed:-0} failed"
if [ "$status" -eq 0 ] && [ "${passed:-0}" -eq 0 ]; then
  echo "e2e: no test ran" >&2
  exit 1
fi
exit "$status"
