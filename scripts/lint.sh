#!/usr/bin/env bash
# The house rules, before any test: formatting, clippy with warnings as errors (the lints are
# in the root Cargo.toml's [workspace.lints]), rustdoc with warnings as errors, and the links
# of the repository's maps. scripts/test.sh runs it first; it needs no models or database.
#
# clippy is a check build: it shares the dependencies' metadata with `cargo doc` but not the
# test build's objects, so on a cold cache it adds roughly a check build of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

cargo fmt --all --check
bash scripts/check-links.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
echo "lint: fmt, links, clippy and rustdoc clean"
