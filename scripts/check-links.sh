#!/usr/bin/env bash
# Checks that every relative link in the repository's maps (ARCHITECTURE.md, README.md,
# docs/*.md) points at a file or folder that exists. Web links and in-page anchors are not
# checked. Exits 1, listing the broken ones, when any is broken.
set -euo pipefail
cd "$(dirname "$0")/.."

broken=0
for doc in ARCHITECTURE.md README.md docs/*.md; do
  [ -f "$doc" ] || continue
  dir="$(dirname "$doc")"
  # Markdown link targets: ](target) — drop an optional "title" and the #anchor.
  while IFS= read -r target; do
    target="${target%% *}"
    target="${target%%#*}"
    case "$target" in
      ''|http://*|https://*|mailto:*) continue ;;
    esac
    if [ ! -e "$dir/$target" ]; then
      echo "$doc: broken link: $target" >&2
      broken=1
    fi
  done < <(grep -o '](\([^)]*\))' "$doc" | sed 's/^](\(.*\))$/\1/')
done
if [ "$broken" -ne 0 ]; then
  exit 1
fi
echo "links: every relative link resolves"
