#!/usr/bin/env bash
# Runs kb's whole test suite on a fresh machine: fetches the models, makes sure a PostgreSQL
# server is reachable (installing and starting one if needed), then runs every test.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

bash scripts/fetch-models.sh
source scripts/ensure-postgres.sh

cargo test --workspace --locked "$@"
